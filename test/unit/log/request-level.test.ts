import { expect } from 'chai';
import { requestLevel } from '../../../src/log/request-log';

describe('request log level', () => {
  it("info for an answered request, warn for a refusal the caller caused, error for the proxy's own failure", () => {
    expect(requestLevel({ outcome: 'ok', status: 200 })).to.equal('info');
    for (const status of [400, 401, 403, 404, 429, 501]) expect(requestLevel({ outcome: 'error', status }), String(status)).to.equal('warn');
    for (const status of [500, 503]) expect(requestLevel({ outcome: 'error', status }), String(status)).to.equal('error');
  });
});
