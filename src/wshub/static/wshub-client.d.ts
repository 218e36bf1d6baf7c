// Types of wshub-client.js, the browser client of the wshub.v1 subprotocol
// (docs/guides/browser-client.md).

export const SUBPROTOCOL: "wshub.v1";
export const FINAL_CLOSE_CODES: readonly number[];

/** Where a message is in its stream: the stream's epoch and a sequence number. */
export interface Position {
  epoch: string;
  seq: number;
}

/** Messages the server can no longer deliver, said instead of lost silently. */
export interface Gap {
  /** The topic, or null for the direct messages of this client. */
  topic: string | null;
  /** "truncated": `from`..`to` were dropped by the history bounds; "reset": unknown. */
  reason: "truncated" | "reset" | string;
  from: number | null;
  to: number | null;
  since: Position | null;
  position: Position | null;
}

export type Data = string | Uint8Array;

export type Event =
  | { type: "message"; topic: string; position: Position | null; data: Data }
  | { type: "direct"; topic: null; position: Position | null; data: Data }
  | ({ type: "gap" } & Gap);

export type State = "connecting" | "open" | "reconnecting" | "closed";

export interface StateInfo {
  code?: number | null;
  reason?: string;
  /** "reconnecting": milliseconds until the next attempt. */
  delay?: number;
  attempt?: number;
  /** "open": the client ID the server gave (kept across reconnects by the session cookie). */
  clientId?: string | null;
  /** "closed": why, when it was not close(). */
  error?: WshubError | null;
}

export interface Backoff {
  /** Milliseconds: the cap of the first delay (default 500). */
  min?: number;
  /** Milliseconds: the largest cap (default 30000). */
  max?: number;
  /** The cap grows by this factor per attempt (default 2). */
  factor?: number;
  /** 1: full jitter, a delay anywhere in [0, cap] (default); 0: exactly the cap. */
  jitter?: number;
}

export interface Options {
  /** Topics to follow from the start; an object gives each one's `since`. */
  topics?: string[] | Record<string, Position | null>;
  onMessage?: (topic: string, position: Position | null, data: Data) => void;
  onDirect?: (position: Position | null, data: Data) => void;
  onGap?: (gap: Gap) => void;
  onState?: (state: State, info: StateInfo) => void;
  onError?: (error: WshubError) => void;
  backoff?: Backoff;
  /** Stop after this many connection attempts in a row that never opened (default: never). */
  maxAttempts?: number;
  /** Requests kept while not connected (default 1000). */
  maxQueued?: number;
  /** false: any close ends the client. */
  reconnect?: boolean;
  /** A WebSocket constructor (default: the global one). */
  WebSocket?: typeof WebSocket;
}

export interface Subscribed {
  topic: string;
  position: Position | null;
  recovered: boolean;
}

export class WshubError extends Error {
  /** An `error` code of docs/protocol.md, or "disconnected", "closed", "subprotocol", "unreachable", "queue_full". */
  code: string;
}

export class WshubClient implements AsyncIterable<Event> {
  readonly url: string;
  readonly state: State;
  readonly clientId: string | null;
  readonly duplicates: number;
  readonly connections: number;
  readonly closeInfo: StateInfo | null;
  readonly directPosition: Position | null;
  readonly topics: string[];
  /** `history`: without `since`, first the last `history` (0 to 1000) messages kept. */
  subscribe(topic: string, options?: { since?: Position | null; history?: number }): Promise<Subscribed>;
  unsubscribe(topic: string): Promise<void>;
  publish(topic: string, data: string | ArrayBuffer | ArrayBufferView): Promise<Position | null>;
  position(topic: string): Position | null;
  close(code?: number, reason?: string): Promise<void>;
  [Symbol.asyncIterator](): AsyncIterator<Event>;
}

export function connect(url?: string, options?: Options): WshubClient;
export function backoffDelay(backoff: Required<Backoff>, attempt: number, random?: () => number): number;
