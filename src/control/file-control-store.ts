/**
 * The embedded control store: state.json in one folder (state-store.ts does the authenticated
 * reading and writing). Changes made by another process on the host (the emergency CLI) are seen
 * through fs.watch on the folder, with a periodic stat as the fallback (network filesystems,
 * missed events); a state in force that is a fault is retried on the same timer, so that the node
 * recovers by itself once the HSM answers again.
 */
import fs from 'node:fs';
import type { AppLogger } from '../log/logger';
import type { ControlStore, StoreWatchHandlers } from './control-store';
import type { StateBody } from './state-model';
import type { StateAuthenticator } from './state-auth';
import { STATE_FILE, StateStore, type ReadResult, type StoredState } from './state-store';

export class FileControlStore implements ControlStore {
  readonly kind = 'file' as const;
  readonly location: string;
  readonly store: StateStore;
  private watcher: fs.FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastStat = '';

  constructor(
    readonly dir: string,
    auth: StateAuthenticator,
    private readonly watchIntervalMs: number,
    private readonly log: AppLogger,
  ) {
    this.store = new StateStore(dir, auth);
    this.location = this.store.file;
  }

  async initIfFresh(nowMs: number): Promise<void> {
    try {
      this.store.ensureDir();
      await this.store.initIfFresh(nowMs);
    } catch (e) {
      this.log.error('control state folder cannot be initialised; failing closed', { stateDir: this.dir, reason: (e as Error).message });
    }
  }

  read(): Promise<ReadResult> {
    return this.store.read();
  }

  mutate<R>(f: (body: StateBody) => { body: StateBody; result: R }, nowMs: () => number): Promise<{ state: StoredState; result: R }> {
    return this.store.mutate(f, nowMs);
  }

  watch(h: StoreWatchHandlers): void {
    this.unwatch();
    try {
      this.watcher = fs.watch(this.dir, { persistent: false }, (_ev, name) => {
        if (name === null || name === STATE_FILE) h.changed('fs.watch');
      });
      this.watcher.on('error', (e) => this.log.warn('fs.watch on the control state folder failed; polling only', { reason: e.message }));
    } catch (e) {
      this.log.warn('fs.watch unavailable for the control state folder; polling only', { reason: (e as Error).message });
    }
    this.lastStat = this.statKey();
    this.timer = setInterval(() => {
      const k = this.statKey();
      if (k !== this.lastStat) {
        this.lastStat = k;
        h.changed('poll');
      } else if (h.wantsRetry()) {
        // A fault, not tampering (e.g. the HSM did not answer while verifying): try again.
        h.changed('retry');
      }
    }, this.watchIntervalMs);
    this.timer.unref();
  }

  noteOwnWrite(): void {
    this.lastStat = this.statKey();
  }

  private statKey(): string {
    try {
      const st = fs.statSync(this.store.file);
      return `${st.ino}:${st.size}:${st.mtimeMs}`;
    } catch (e) {
      return (e as NodeJS.ErrnoException).code ?? 'error';
    }
  }

  unwatch(): void {
    this.watcher?.close();
    this.watcher = undefined;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  async close(): Promise<void> {
    this.unwatch();
  }
}
