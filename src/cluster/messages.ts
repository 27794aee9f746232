/** IPC between the cluster primary and its workers (src/cluster/). */
export type PrimaryMessage =
  /** Load the new control state at once and drain this worker's operations in `scope`. */
  | { type: 'xks:engage'; id: number; scope: string }
  /**
   * A control change other than an engage: load it at once. With an id, answer ControlAck once it
   * is applied (loading verifies the state in the HSM, so it is asynchronous).
   */
  | { type: 'xks:control-reload'; id?: number }
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

/** A worker has loaded a control change (ControlPlane.reload). */
export interface ControlAck {
  type: 'xks:control-loaded';
  id: number;
}

export type WorkerMessage = { type: 'xks:ready'; port: number } | EngageAck | ReloadAck | ControlAck;
