// wshub-client.js: the browser client of the wshub.v1 subprotocol.
//
// An ES module with no dependencies and no build step.  The wshub server
// serves it (wshub.browser.serve_client, at /wshub-client.js by default);
// a bundler takes it from the installed package (wshub/static/).  The wire
// format is docs/protocol.md; the guide is docs/guides/browser-client.md.
//
//   import { connect } from "/wshub-client.js";
//   const client = connect("/", {
//     topics: ["chat"],
//     onMessage(topic, position, data) { ... },
//     onGap(gap) { ... },          // history too short: said, never silent
//     onState(state, info) { ... },
//   });
//   await client.publish("chat", "hello");
//
// The client keeps, per topic, the last position (epoch, seq) it delivered.
// When the connection drops it reconnects by itself (exponential backoff
// with full jitter), says hello again (the browser sends the session
// cookie, so the server keeps the client ID), resubscribes each topic with
// `since` = that position, and delivers the replay in order, each message
// once (a message at or below the last position of its epoch is dropped).

export const SUBPROTOCOL = "wshub.v1";

/** Close codes after which reconnecting cannot help: the client stops. */
export const FINAL_CLOSE_CODES = Object.freeze([1002, 1003, 1007, 1008, 1010]);

const DEFAULT_BACKOFF = Object.freeze({ min: 500, max: 30000, factor: 2, jitter: 1 });

/** A request the server refused (`code` from docs/protocol.md), or a lost connection. */
export class WshubError extends Error {
  constructor(message, code = "client") {
    super(message);
    this.name = "WshubError";
    this.code = code;
  }
}

/** Open a client of `url` (a ws:, wss:, http:, https: or page-relative URL). */
export function connect(url, options = {}) {
  return new WshubClient(url, options);
}

/** The delay before reconnect attempt `attempt` (0, 1, ...), in milliseconds. */
export function backoffDelay(backoff, attempt, random = Math.random) {
  const cap = Math.min(backoff.max, backoff.min * Math.pow(backoff.factor, attempt));
  return cap * (1 - backoff.jitter) + random() * cap * backoff.jitter;
}

function socketUrl(url) {
  const base = typeof location !== "undefined" ? location.href : undefined;
  const parsed = base === undefined ? new URL(url) : new URL(url, base);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  else if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new TypeError(`wshub: ${url} is not a ws:, wss:, http: or https: URL`);
  }
  parsed.hash = "";
  return parsed.href;
}

function checkBackoff(given) {
  const backoff = { ...DEFAULT_BACKOFF, ...(given || {}) };
  const { min, max, factor, jitter } = backoff;
  if (!(min >= 0 && max >= min && factor >= 1 && jitter >= 0 && jitter <= 1)) {
    throw new RangeError("wshub: backoff needs 0 <= min <= max, factor >= 1, 0 <= jitter <= 1");
  }
  return backoff;
}

function checkTopic(topic) {
  if (typeof topic !== "string" || topic === "") {
    throw new TypeError("wshub: a topic is a non-empty string");
  }
  return topic;
}

function checkPosition(value) {
  if (value === null || value === undefined) return null;
  if (typeof value !== "object" || typeof value.epoch !== "string" || !Number.isSafeInteger(value.seq) || value.seq < 0) {
    throw new TypeError("wshub: a position is {epoch: string, seq: integer >= 0} or null");
  }
  return { epoch: value.epoch, seq: value.seq };
}

function checkHistory(value) {
  if (!Number.isSafeInteger(value) || value < 0 || value > 1000) {
    throw new TypeError("wshub: history is an integer from 0 to 1000");
  }
  return value;
}

function positionOf(message) {
  const { epoch, seq } = message;
  return typeof epoch === "string" && Number.isSafeInteger(seq) ? { epoch, seq } : null;
}

function readPosition(value) {
  return value && typeof value === "object" ? positionOf(value) : null;
}

function seenAlready(last, position) {
  return last !== null && position !== null && last.epoch === position.epoch && position.seq <= last.seq;
}

function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function encodeData(data) {
  if (typeof data === "string") return { data };
  if (data instanceof ArrayBuffer) return { data: toBase64(new Uint8Array(data)), binary: true };
  if (ArrayBuffer.isView(data)) {
    return { data: toBase64(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)), binary: true };
  }
  throw new TypeError("wshub: publish takes a string, an ArrayBuffer or a typed array");
}

function call(callback, ...args) {
  if (typeof callback !== "function") return;
  try {
    callback(...args);
  } catch (error) {
    // An application callback's error must not stop the client.
    setTimeout(() => { throw error; });
  }
}

export class WshubClient {
  constructor(url, options = {}) {
    this.url = socketUrl(url === undefined || url === null ? "/" : url);
    this.options = options;
    this.backoff = checkBackoff(options.backoff);
    this.maxAttempts = options.maxAttempts === undefined ? Infinity : options.maxAttempts;
    this.maxQueued = options.maxQueued === undefined ? 1000 : options.maxQueued;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("wshub: no WebSocket here: pass options.WebSocket");
    }
    /** "connecting", "open", "reconnecting" or "closed". */
    this.state = "connecting";
    /** The server's ID of this client (from `welcome`), kept across reconnects. */
    this.clientId = null;
    /** Messages dropped because they had been delivered already (a replay overlap). */
    this.duplicates = 0;
    /** How many times the client connected (welcome received). */
    this.connections = 0;
    /** Why the client stopped (state "closed"): {code, reason, error}. */
    this.closeInfo = null;
    this._directStream = { position: null }; // this client's direct messages
    this._topics = new Map(); // topic -> {position, since, acked, waiters}
    this._pending = new Map(); // request id -> {kind, topic, resolve, reject}
    this._queue = []; // requests waiting for a connection: {message, entry}
    this._nextId = 1;
    this._attempt = 0;
    this._failures = 0;
    this._socket = null;
    this._helloSince = null;
    this._timer = null;
    this._iterators = new Set();
    this._closed = null;
    const topics = options.topics || [];
    const wanted = Array.isArray(topics) ? topics.map((t) => [t, null]) : Object.entries(topics);
    for (const [topic, since] of wanted) this._entry(checkTopic(topic), checkPosition(since));
    this._open();
  }

  // ------------------------------------------------------------- public API

  /**
   * Follow `topic`; resolves with {topic, position, recovered} once the server said so.
   * `history`: without `since`, first the last `history` messages the server keeps.
   */
  subscribe(topic, { since = null, history = 0 } = {}) {
    checkTopic(topic);
    checkHistory(history);
    if (this.state === "closed") return Promise.reject(this._closedError());
    let entry = this._topics.get(topic);
    if (entry === undefined) {
      entry = this._entry(topic, checkPosition(since));
      entry.history = since === null ? history : 0;
      if (this._socket !== null && this._socket.readyState === 1 && this._greeted) this._sendSubscribe(topic, entry);
    }
    if (entry.answer !== null) return Promise.resolve(entry.answer);
    return new Promise((resolve, reject) => entry.waiters.push({ resolve, reject }));
  }

  /** Stop following `topic` (its messages in flight are dropped). */
  unsubscribe(topic) {
    checkTopic(topic);
    const entry = this._topics.get(topic);
    if (entry === undefined) return Promise.resolve();
    this._topics.delete(topic);
    for (const waiter of entry.waiters) waiter.reject(new WshubError("unsubscribed", "unsubscribed"));
    // Not connected: the next connection does not subscribe it.  Connected:
    // the server takes the unsubscribe after the subscribe it may not have
    // answered yet.
    if (!this._isOpen()) return Promise.resolve();
    return this._request({ type: "unsubscribe", topic }).catch((error) => {
      if (error.code !== "not_subscribed" && error.code !== "disconnected") throw error;
    });
  }

  /**
   * Publish `data` (a string, or bytes) to `topic`; resolves with the position
   * it got (null without history).  Queued while reconnecting; a publish in
   * flight when the connection drops is rejected (code "disconnected": it may
   * or may not have been published).
   */
  publish(topic, data) {
    checkTopic(topic);
    return this._request({ type: "publish", topic, ...encodeData(data) }).then((answer) =>
      readPosition(answer.position),
    );
  }

  /** The last position delivered of `topic` (null: none yet). */
  position(topic) {
    const entry = this._topics.get(topic);
    return entry === undefined || entry.position === null ? null : { ...entry.position };
  }

  /** The last position delivered of this client's direct messages (null: none yet). */
  get directPosition() {
    return this._directStream.position;
  }

  /** The topics followed. */
  get topics() {
    return [...this._topics.keys()];
  }

  /** Close for good (no reconnect); resolves when the socket is closed. */
  close(code = 1000, reason = "") {
    if (this.state !== "closed") {
      const socket = this._socket;
      this._stop({ code, reason, error: null });
      if (socket !== null && socket.readyState <= 1) {
        return new Promise((resolve) => {
          socket.addEventListener("close", () => resolve());
          socket.close(code, reason);
        });
      }
    }
    return Promise.resolve();
  }

  /** Async iteration of {type: "message" | "direct" | "gap", ...}, until closed. */
  [Symbol.asyncIterator]() {
    const queue = [];
    let wake = null;
    const iterator = {
      push(event) {
        queue.push(event);
        iterator.wakeUp();
      },
      wakeUp() {
        if (wake !== null) { wake(); wake = null; }
      },
      next: async () => {
        while (queue.length === 0) {
          if (this.state === "closed" || !this._iterators.has(iterator)) return { value: undefined, done: true };
          await new Promise((resolve) => { wake = resolve; });
        }
        return { value: queue.shift(), done: false };
      },
      return: async () => {
        this._iterators.delete(iterator);
        iterator.wakeUp();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() { return iterator; },
    };
    this._iterators.add(iterator);
    return iterator;
  }

  // ------------------------------------------------------------ connection

  _open() {
    this._greeted = false;
    let socket;
    try {
      socket = new this.WebSocket(this.url, [SUBPROTOCOL]);
    } catch (error) {
      this._stop({ code: null, reason: "", error });
      return;
    }
    this._socket = socket;
    let opened = false;
    socket.onopen = () => {
      if (this._socket !== socket) return;
      opened = true;
      if (socket.protocol !== SUBPROTOCOL) {
        const error = new WshubError(
          `wshub: the server at ${this.url} does not speak ${SUBPROTOCOL} (it chose "${socket.protocol}"): is its pub/sub layer on?`,
          "subprotocol",
        );
        this._stop({ code: null, reason: "", error });
        socket.close(1000, "wshub.v1 expected");
        return;
      }
      this._greeted = true;
      this._helloSince = this.directPosition;
      this._send({ type: "hello", since: this._helloSince });
      for (const [topic, entry] of this._topics) this._sendSubscribe(topic, entry);
      const queued = this._queue;
      this._queue = [];
      for (const { message, request } of queued) this._sendRequest(message, request);
    };
    socket.onmessage = (event) => {
      if (this._socket === socket) this._receive(event.data);
    };
    socket.onclose = (event) => {
      if (this._socket !== socket) return;
      this._socket = null;
      this._lost(event.code, event.reason, opened);
    };
  }

  _lost(code, reason, opened) {
    for (const entry of this._topics.values()) entry.acked = false;
    for (const [id, request] of this._pending) {
      this._pending.delete(id);
      request.reject(new WshubError(`wshub: the connection closed (${code}) before the server answered`, "disconnected"));
    }
    if (this.state === "closed") return;
    if (FINAL_CLOSE_CODES.includes(code) || this.options.reconnect === false) {
      this._stop({ code, reason, error: new WshubError(`wshub: the server closed the connection with ${code} ${reason}`.trim(), "closed") });
      return;
    }
    this._failures = opened ? 0 : this._failures + 1;
    if (this._failures >= this.maxAttempts) {
      this._stop({
        code,
        reason,
        error: new WshubError(`wshub: no connection to ${this.url} after ${this._failures} attempts`, "unreachable"),
      });
      return;
    }
    const delay = backoffDelay(this.backoff, this._attempt);
    this._attempt += 1;
    this._setState("reconnecting", { code, reason, delay, attempt: this._attempt });
    this._timer = setTimeout(() => {
      this._timer = null;
      if (this.state !== "closed") this._open();
    }, delay);
  }

  _stop(info) {
    if (this.state === "closed") return;
    if (this._timer !== null) { clearTimeout(this._timer); this._timer = null; }
    this._socket = null;
    this.closeInfo = info;
    const error = this._closedError();
    for (const request of this._pending.values()) request.reject(error);
    this._pending.clear();
    for (const { request } of this._queue) request.reject(error);
    this._queue = [];
    for (const entry of this._topics.values()) {
      for (const waiter of entry.waiters) waiter.reject(error);
      entry.waiters = [];
    }
    this._setState("closed", info);
    for (const iterator of this._iterators) iterator.wakeUp(); // they end once drained
    if (info.error) call(this.options.onError, info.error);
  }

  _closedError() {
    const info = this.closeInfo;
    return info && info.error ? info.error : new WshubError("wshub: the client is closed", "closed");
  }

  _setState(state, info) {
    if (this.state === state && state !== "reconnecting") return;
    this.state = state;
    call(this.options.onState, state, info || {});
  }

  _isOpen() {
    return this._socket !== null && this._socket.readyState === 1 && this._greeted;
  }

  // -------------------------------------------------------------- requests

  _entry(topic, since) {
    const entry = { position: since, since: null, history: 0, acked: false, answer: null, waiters: [] };
    this._topics.set(topic, entry);
    return entry;
  }

  _send(message) {
    this._socket.send(JSON.stringify(message));
  }

  _retrySubscribe(topic, entry) {
    entry.retries = (entry.retries || 0) + 1;
    const socket = this._socket;
    setTimeout(() => {
      // Not if it was dropped, or if a new connection resubscribed it.
      if (this._topics.get(topic) === entry && this._socket === socket && this._isOpen()) {
        this._sendSubscribe(topic, entry);
      }
    }, backoffDelay(this.backoff, entry.retries));
  }

  _sendSubscribe(topic, entry) {
    entry.since = entry.position;
    entry.acked = false;
    const id = this._nextId++;
    this._pending.set(id, {
      kind: "subscribe",
      topic,
      resolve: () => {},
      reject: () => {},
    });
    const message = { type: "subscribe", topic, since: entry.position, id };
    if (entry.position === null && entry.history > 0) message.history = entry.history;
    this._send(message);
  }

  _request(message) {
    if (this.state === "closed") return Promise.reject(this._closedError());
    return new Promise((resolve, reject) => {
      const request = { kind: message.type, topic: message.topic, resolve, reject };
      if (this._isOpen()) {
        this._sendRequest(message, request);
      } else if (this._queue.length >= this.maxQueued) {
        reject(new WshubError(`wshub: ${this.maxQueued} requests already wait for a connection`, "queue_full"));
      } else {
        this._queue.push({ message, request });
      }
    });
  }

  _sendRequest(message, request) {
    const id = this._nextId++;
    this._pending.set(id, request);
    this._send({ ...message, id });
  }

  // --------------------------------------------------------- what arrives

  _receive(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch (error) {
      message = null;
    }
    if (message === null || typeof message !== "object") {
      call(this.options.onError, new WshubError("wshub: the server sent something that is not a wshub.v1 message", "bad_message"));
      return;
    }
    switch (message.type) {
      case "message": return this._message(message);
      case "direct": return this._direct(message);
      case "subscribed": return this._subscribed(message);
      case "gap": return this._gap(message);
      case "welcome": return this._welcome(message);
      case "published":
      case "unsubscribed":
      case "error": return this._answer(message);
      default: return undefined; // a later minor version's message: ignored
    }
  }

  _welcome(message) {
    this.clientId = typeof message.client_id === "string" ? message.client_id : null;
    // Without "since", the direct messages that follow come after this
    // position; with it, the replay (or a gap) follows.
    const position = readPosition(message.position);
    if (this._helloSince === null && position !== null) this._directStream.position = position;
    this.connections += 1;
    this._attempt = 0;
    this._setState("open", { clientId: this.clientId, recovered: message.recovered === true });
  }

  _subscribed(message) {
    const topic = message.topic;
    const request = this._pending.get(message.id);
    if (request !== undefined) this._pending.delete(message.id);
    const entry = this._topics.get(topic);
    if (entry === undefined) return;
    entry.acked = true;
    entry.retries = 0;
    const position = readPosition(message.position);
    // A fresh subscription: what comes next is after the position it got.
    // A resume keeps its own: the replay (or a gap) follows.
    // With `history`, the replay of the last messages follows: from before them.
    if (entry.since === null && position !== null) {
      entry.position = entry.history > 0 ? { epoch: position.epoch, seq: Math.max(0, position.seq - entry.history) } : position;
    }
    entry.history = 0;
    const answer = { topic, position, recovered: message.recovered === true };
    entry.answer = answer;
    const waiters = entry.waiters;
    entry.waiters = [];
    for (const waiter of waiters) waiter.resolve(answer);
  }

  _gap(message) {
    const topic = typeof message.topic === "string" ? message.topic : null;
    const position = readPosition(message.position);
    const stream = topic === null ? this._directStream : this._topics.get(topic);
    if (stream === undefined) return;
    if (message.reason === "truncated") {
      // The kept messages after the hole follow: a resume from here on
      // starts after the hole (it is reported once).
      if (position !== null && Number.isSafeInteger(message.to)) {
        stream.position = { epoch: position.epoch, seq: message.to };
      }
    } else {
      // A reset: nothing is replayed, what comes next is after the
      // server's latest position (null: nothing kept, start afresh).
      stream.position = position;
    }
    const gap = {
      topic,
      reason: String(message.reason),
      from: Number.isSafeInteger(message.from) ? message.from : null,
      to: Number.isSafeInteger(message.to) ? message.to : null,
      since: readPosition(message.since),
      position,
    };
    call(this.options.onGap, gap);
    this._emit({ type: "gap", ...gap });
  }

  _message(message) {
    const entry = this._topics.get(message.topic);
    if (entry === undefined) return; // unsubscribed: in flight
    const position = this._advance(entry, message);
    if (position === undefined) return;
    const data = this._data(message);
    call(this.options.onMessage, message.topic, position, data);
    this._emit({ type: "message", topic: message.topic, position, data });
  }

  _direct(message) {
    const position = this._advance(this._directStream, message);
    if (position === undefined) return;
    const data = this._data(message);
    call(this.options.onDirect, position, data);
    this._emit({ type: "direct", topic: null, position, data });
  }

  /** The message's position, now the stream's last; undefined: delivered already. */
  _advance(stream, message) {
    const position = positionOf(message);
    if (seenAlready(stream.position, position)) {
      this.duplicates += 1;
      return undefined;
    }
    if (position !== null) stream.position = position;
    return position;
  }

  _answer(message) {
    const request = this._pending.get(message.id);
    if (request === undefined) {
      if (message.type === "error") {
        call(this.options.onError, new WshubError(`wshub: ${message.code}: ${message.message}`, String(message.code)));
      }
      return;
    }
    this._pending.delete(message.id);
    if (message.type !== "error") {
      request.resolve(message);
      return;
    }
    const error = new WshubError(`wshub: ${message.code}: ${message.message}`, String(message.code));
    if (request.kind === "subscribe") {
      const entry = this._topics.get(request.topic);
      if (entry !== undefined && message.code === "already_subscribed") {
        // The server still had it (the same client ID): followed as before.
        this._subscribed({ topic: request.topic, position: null, recovered: false });
      } else if (entry !== undefined && message.code === "unavailable") {
        // The server cannot follow it now (its cluster's Redis is out of
        // reach): kept, and asked again with backoff on this connection.
        this._retrySubscribe(request.topic, entry);
      } else if (entry !== undefined) {
        // Refused (forbidden, limit, bad_topic): the topic is not followed.
        this._topics.delete(request.topic);
        for (const waiter of entry.waiters) waiter.reject(error);
        call(this.options.onError, error);
      }
      return;
    }
    request.reject(error);
  }

  _data(message) {
    const data = typeof message.data === "string" ? message.data : "";
    return message.binary === true ? fromBase64(data) : data;
  }

  _emit(event) {
    for (const iterator of this._iterators) iterator.push(event);
  }
}
