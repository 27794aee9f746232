/** Polls `f` until it returns true (bounded): for state that has no event of its own (HTTP answers, etcd watches seen by another process). */
export async function until(f: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`not reached within ${timeoutMs} ms: ${what}`);
}
