/**
 * Where the control state lives, behind one interface (docs/fleet.md; design.md "Fleet: the control
 * store behind an interface"). The control plane reads the state through `read()` into its
 * in-memory snapshot (the hot path never calls the store), writes with `mutate()` (a
 * read-modify-write that never loses a concurrent update: a lock for the file store, a transaction
 * on the revision read for etcd), and learns about changes made elsewhere through `watch()`.
 *
 *   file  state.json in control.stateDir, authenticated in the HSM (state-store.ts); one host.
 *   etcd  one key under control.etcd.prefix, the same authenticated envelope, shared by a fleet
 *         (etcd-store.ts).
 */
import type { StateBody } from './state-model';
import type { ReadResult, StoredState } from './state-store';

export interface StoreWatchHandlers {
  /** The state may have changed: re-read it (origin names the trigger, for the log). */
  changed(origin: string): void;
  /**
   * The store can (undefined) or cannot (a reason) confirm that the state in force is current.
   * Reported only once the configured staleness bound has run out: the control plane then fails
   * closed. Never called by the file store (a local file is always current).
   */
  staleness?(reason: string | undefined): void;
  /** True while the state in force is a fault (not tampering): the store retries on its own. */
  wantsRetry(): boolean;
}

export interface ControlStore {
  readonly kind: 'file' | 'etcd';
  /** Where the state is, for messages (a path or etcd key). */
  readonly location: string;
  /** Create the first, empty state on a fresh store (never re-creates a deleted one). */
  initIfFresh(nowMs: number): Promise<void>;
  read(): Promise<ReadResult>;
  mutate<R>(f: (body: StateBody) => { body: StateBody; result: R }, nowMs: () => number): Promise<{ state: StoredState; result: R }>;
  watch(h: StoreWatchHandlers): void;
  /** After a change of this process's own (so that the watcher does not report it again). */
  noteOwnWrite(): void;
  unwatch(): void;
  close(): Promise<void>;
}
