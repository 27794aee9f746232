/**
 * CloudTrail events as CloudTrail records KMS API calls (the documented event record format:
 * eventVersion, userIdentity, eventTime, eventSource, eventName, requestParameters, requestID,
 * resources, eventType...), for the reconciliation tests.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

export interface KmsCall {
  requestId: string;
  eventName: string;
  keyArn: string;
  principalArn?: string;
  time?: Date;
  errorCode?: string;
  customKeyStoreId?: string;
}

export function kmsEvent(c: KmsCall): Record<string, unknown> {
  const account = c.keyArn.split(':')[4];
  const principal = c.principalArn ?? `arn:aws:iam::${account}:user/Alice`;
  const assumed = principal.includes(':assumed-role/');
  return {
    eventVersion: '1.08',
    userIdentity: assumed
      ? { type: 'AssumedRole', principalId: 'AROAEXAMPLE:session', arn: principal, accountId: account, sessionContext: { sessionIssuer: { type: 'Role', arn: principal.replace(':sts::', ':iam::').replace('assumed-role/', 'role/').replace(/\/[^/]+$/, '') } } }
      : { type: 'IAMUser', principalId: 'AIDAEXAMPLE', arn: principal, accountId: account, userName: principal.split('/').pop() },
    eventTime: (c.time ?? new Date()).toISOString().replace(/\.\d{3}Z$/, 'Z'),
    eventSource: 'kms.amazonaws.com',
    eventName: c.eventName,
    awsRegion: c.keyArn.split(':')[3],
    sourceIPAddress: '192.0.2.0',
    userAgent: 'aws-cli/2.13.5',
    requestParameters: c.eventName === 'CreateKey' ? { origin: 'EXTERNAL_KEY_STORE', customKeyStoreId: c.customKeyStoreId, xksKeyId: 'k1' } : { keyId: c.keyArn, encryptionAlgorithm: 'SYMMETRIC_DEFAULT' },
    responseElements: c.eventName === 'CreateKey' ? { keyMetadata: { arn: c.keyArn, customKeyStoreId: c.customKeyStoreId } } : null,
    ...(c.customKeyStoreId ? { additionalEventData: { customKeyStoreId: c.customKeyStoreId } } : {}),
    ...(c.errorCode ? { errorCode: c.errorCode, errorMessage: 'failed' } : {}),
    requestID: c.requestId,
    eventID: crypto.randomUUID(),
    readOnly: true,
    resources: [{ accountId: account, type: 'AWS::KMS::Key', ARN: c.keyArn }],
    eventType: 'AwsApiCall',
    managementEvent: true,
    recipientAccountId: account,
    eventCategory: 'Management',
  };
}

/** One CloudTrail log file as CloudTrail delivers it: gzip JSON {"Records": [...]} in an account/region/date tree. */
export function writeCloudTrailFile(root: string, events: Record<string, unknown>[], name = 'ct-1'): string {
  const dir = path.join(root, 'AWSLogs', '123456789012', 'CloudTrail', 'us-east-1', '2026', '11', '27');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `123456789012_CloudTrail_us-east-1_${name}.json.gz`);
  fs.writeFileSync(file, zlib.gzipSync(JSON.stringify({ Records: events })));
  return file;
}
