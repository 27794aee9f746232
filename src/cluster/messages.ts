/** IPC between the cluster primary and its workers (src/cluster/). */
export type PrimaryMessage =
  /** Load the new control state at once and drain this worker's operations in `scope`. */
  | { type: 'xks:engage'; id: number; scope: string }
  /**
   * A control change other than an engage: load it at once. With an id, answer ReloadAck once it
   * is applied (loading verifies the state in the HSM, so it is asynchronous).
   */
  | { type: 'xks:control-reload'; id?: number };

export interface EngageAck {
  type: 'xks:engaged';
  id: number;
  drained: boolean;
  stillInFlight: number;
}

export interface ReloadAck {
  type: 'xks:reloaded';
  id: number;
}

export type WorkerMessage = { type: 'xks:ready'; port: number } | EngageAck | ReloadAck;
