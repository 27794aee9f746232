/** IPC between the cluster primary and its workers (src/cluster/). */
export type PrimaryMessage =
  /** Load the new control state at once and drain this worker's operations in `scope`. */
  | { type: 'xks:engage'; id: number; scope: string }
  /** A control change other than an engage: load it at once. */
  | { type: 'xks:control-reload' }
  /** Re-read the configuration file (hot reload) and answer once it is applied. */
  | { type: 'xks:reload'; id: number };

export interface EngageAck {
  type: 'xks:engaged';
  id: number;
  drained: boolean;
  stillInFlight: number;
}

export interface ReloadAck {
  type: 'xks:reloaded';
  id: number;
  /** Absent when the reload was applied; else why the worker kept its configuration. */
  error?: string;
  /** Changed settings that this worker applies only after a restart. */
  needsRestart?: string[];
}

export type WorkerMessage = { type: 'xks:ready'; port: number } | EngageAck | ReloadAck;
