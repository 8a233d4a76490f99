// Types of fanfare's browser client (/_fanfare/client.js, /_fanfare/client.umd.js).

export type Transport = "ws" | "sse" | "poll";

export interface Options {
  /** Transports to try, best first; default all three. Limited to what the page has. */
  transports?: Transport[];
  /** A token (sent as `access_token`), or a function giving a fresh one per connect. */
  token?: string | (() => string | Promise<string>);
  /** Resume from this cursor (the `id` of the last event seen). */
  cursor?: string;
  /** The base the path is resolved against; default the page's URL (required in Node). */
  base?: string;
  /** How long a transport may take to open before the next is tried (ms); default 5000. */
  openTimeout?: number;
}

export interface Meta {
  /** The event's cursor; null for events to this one connection (the app's first events). */
  id: string | null;
  /** The event name (`Fanfare-Event`), `message` by default. */
  event: string;
  /** The NATS subject (WebSocket and long-polling only). */
  subject?: string;
}

export interface FanfareError extends Error {
  /** `needs_websocket`, `disconnected`, `closed`, `unreachable`, `refused`, or a server error code. */
  code: string;
  status?: number;
  data?: unknown;
}

export interface Realtime {
  /** `connect`, `disconnect`, `error`, `reset`, or an event name (`message` is the default). */
  on(name: "connect", fn: (info: { transport: Transport; resumed: boolean }) => void): this;
  on(name: "disconnect", fn: (info: { reason: string; willReconnect: boolean }) => void): this;
  on(name: "error", fn: (err: FanfareError) => void): this;
  on(name: "reset", fn: (info: { reason: string; dropped?: number }) => void): this;
  on(name: string, fn: (data: any, meta: Meta) => void): this;
  off(name: string, fn: (...args: any[]) => void): this;
  /** Publishes to a subject the route allows (WebSocket only); resolves on the ack. */
  publish(subject: string, data: unknown, options?: { event?: string }): Promise<unknown>;
  /** Sends data to the route's `app.message`; resolves with the app's answer (WebSocket only). */
  rpc(data: unknown, options?: { event?: string }): Promise<any>;
  /** Closes for good. */
  close(): void;
  /** The transport in use (or being tried). */
  readonly transport: Transport | null;
  /** The last cursor seen. */
  readonly cursor: string | null;
}

export function connect(path: string, options?: Options): Realtime;
/** The reconnect delay (ms) of the `attempt`-th retry: full jitter in [base/2, base], base 1 s doubling to 30 s. */
export function backoff(attempt: number): number;
declare const fanfare: { connect: typeof connect; backoff: typeof backoff };
export default fanfare;
