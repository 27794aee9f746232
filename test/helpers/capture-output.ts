/** Runs a CLI entry point in-process and collects what it writes to stdout and stderr. */
export async function captureOutput(run: () => Promise<number>): Promise<{ code: number; out: string; err: string }> {
  const realOut = process.stdout.write;
  const realErr = process.stderr.write;
  let out = '';
  let err = '';
  const sink = (append: (s: string) => void) =>
    ((chunk: any, ...rest: any[]) => {
      append(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString());
      const cb = rest.find((a) => typeof a === 'function');
      if (cb) cb();
      return true;
    }) as typeof process.stdout.write;
  process.stdout.write = sink((s) => (out += s));
  process.stderr.write = sink((s) => (err += s));
  try {
    return { code: await run(), out, err };
  } finally {
    process.stdout.write = realOut;
    process.stderr.write = realErr;
  }
}
