import { expect } from 'chai';
import { z } from 'zod';
import { schemaKeys } from '../../../src/config/schema-keys';
import { ConfigSchema } from '../../../src/config/schema';

describe('config keys derived from the schema', () => {
  it('walks objects inside optional, default, array, record, union and pipe', () => {
    const s = z.object({
      a: z.string().default('x'),
      b: z.array(z.object({ c: z.number() })).optional(),
      d: z.record(z.string(), z.object({ e: z.boolean() })),
      f: z.union([z.object({ g: z.string() }), z.object({ h: z.string() })]),
      i: z.object({ j: z.string() }).transform((v) => v),
    });
    expect(schemaKeys(s).sort()).to.deep.equal(['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j']);
  });

  it('finds keys of every section of the real schema, the control section included', () => {
    const keys = new Set(schemaKeys(ConfigSchema));
    for (const k of ['server', 'bodyTimeoutMs', 'maxPendingPerPeer', 'allowedSubjects', 'tokenLabel', 'compatibility', 'externalKeyId', 'approvalsRequired', 'defaultForKeyStoresWithoutPolicy', 'jwksFile', 'checkpointIntervalSeconds']) {
      expect(keys.has(k), k).to.equal(true);
    }
  });
});
