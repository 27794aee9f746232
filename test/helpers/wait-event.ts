/**
 * Waiting on an emitter's event (the control plane's 'stale', 'reload', 'applied', ...): resolves
 * with the payload of the first one for which `pred` holds, rejects after timeoutMs. A bounded wait
 * on a condition, not a sleep.
 */
import type { EventEmitter } from 'node:events';

export function waitEvent<T>(em: EventEmitter, ev: string, pred: (x: T) => boolean, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      em.off(ev, on);
      reject(new Error(`no '${ev}' event within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (x: T) => {
      if (!pred(x)) return;
      clearTimeout(timer);
      em.off(ev, on);
      resolve(x);
    };
    em.on(ev, on);
  });
}
