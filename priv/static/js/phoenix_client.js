// A small Phoenix Channels client for the browser, written for Courier's chat page.
//
// It speaks the V2 JSON serializer (`[join_ref, ref, topic, event, payload]`), and keeps a
// socket usable across drops: heartbeats on the `phoenix` topic, replies matched by ref with
// timeouts, reconnects and channel rejoins with backoff. `Inbox` adds Courier's rules for a
// `user:<eid>` topic on top. The official phoenix.js is not used here on purpose: the page must
// load nothing from outside the server, and phoenix.js compatibility is tested in tests/js.

const HEARTBEAT_MS = 30_000;
const PUSH_TIMEOUT_MS = 10_000;
// Quick first retries cover a server restart; the cap keeps a long outage from hammering it.
const RECONNECT_STEPS_MS = [200, 500, 1_000, 2_000, 5_000, 10_000];
const REJOIN_STEPS_MS = [1_000, 2_000, 5_000, 10_000, 30_000];
// Must not look like a normal close (1000), which would suggest the server ended the session.
const HEARTBEAT_CLOSE_CODE = 4000;
const BEARER_PREFIX = "base64url.bearer.phx.";

/** Backoff with jitter, so that tabs dropped together do not all come back in the same tick. */
function backoff(steps, tries) {
  const base = steps[Math.min(tries, steps.length - 1)];
  return Math.round(base * (0.8 + Math.random() * 0.4));
}

/** Base64url without padding: the only form a token may take inside Sec-WebSocket-Protocol. */
function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Why a push got no reply: it timed out, or its socket or channel went away first. */
export class PushError extends Error {
  constructor(kind, event, topic) {
    super(`${event} on ${topic}: ${kind}`);
    this.name = "PushError";
    this.kind = kind;
  }
}

class Listeners {
  constructor() {
    this.map = new Map();
  }
  on(event, fn) {
    if (!this.map.has(event)) this.map.set(event, new Set());
    this.map.get(event).add(fn);
    return () => this.map.get(event)?.delete(fn);
  }
  emit(event, ...args) {
    for (const fn of [...(this.map.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (err) {
        // One broken listener must not keep the others (or the socket's read loop) from running.
        console.error(`listener for ${event} failed`, err);
      }
    }
  }
}

export class Socket {
  /**
   * `url` is the endpoint without `/websocket` (as with phoenix.js: "/socket"), relative URLs
   * resolved against the page. `authToken` travels as a subprotocol, which keeps it out of the
   * URL (and so out of proxies' access logs and the browser's history).
   */
  constructor(url, { authToken, params = {}, heartbeatMs = HEARTBEAT_MS, timeoutMs = PUSH_TIMEOUT_MS } = {}) {
    const endpoint = new URL(`${url.replace(/\/$/, "")}/websocket`, globalThis.location?.href);
    endpoint.protocol = endpoint.protocol === "https:" ? "wss:" : endpoint.protocol === "http:" ? "ws:" : endpoint.protocol;
    endpoint.searchParams.set("vsn", "2.0.0");
    for (const [key, value] of Object.entries(params)) endpoint.searchParams.set(key, String(value));
    this.endpoint = endpoint.toString();
    this.authToken = authToken;
    this.heartbeatMs = heartbeatMs;
    this.timeoutMs = timeoutMs;
    this.ws = null;
    this.wanted = false;
    this.tries = 0;
    this.reconnectTimer = null;
    this.heartbeatTimer = null;
    this.heartbeatRef = null;
    this.nextRef = 0;
    this.replies = new Map();
    this.channels = new Set();
    this.listeners = new Listeners();
  }

  /** "open", "connecting" or "closed". */
  get state() {
    if (this.ws?.readyState === WebSocket.OPEN) return "open";
    if (this.ws?.readyState === WebSocket.CONNECTING || this.reconnectTimer) return "connecting";
    return "closed";
  }

  isConnected() {
    return this.state === "open";
  }

  /** `open`, `close` ({code, reason, wasClean}), `error`, `state` (after any change). */
  on(event, fn) {
    return this.listeners.on(event, fn);
  }

  makeRef() {
    this.nextRef += 1;
    return String(this.nextRef);
  }

  connect() {
    this.wanted = true;
    if (this.ws && this.ws.readyState !== WebSocket.CLOSED) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const protocols = this.authToken ? ["phoenix", BEARER_PREFIX + base64url(this.authToken)] : [];
    const ws = new WebSocket(this.endpoint, protocols);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.tries = 0;
      this.startHeartbeat();
      this.listeners.emit("open");
      this.listeners.emit("state", this.state);
      for (const channel of this.channels) channel.socketOpened();
    };
    ws.onerror = () => {
      if (this.ws === ws) this.listeners.emit("error");
    };
    ws.onmessage = (event) => {
      if (this.ws === ws) this.receive(event.data);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.closed({ code: event.code, reason: event.reason, wasClean: event.wasClean });
    };
    this.listeners.emit("state", this.state);
  }

  /** Closes for good: no reconnect until `connect()` is called again. */
  disconnect() {
    this.wanted = false;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const ws = this.ws;
    if (ws && ws.readyState !== WebSocket.CLOSED) {
      ws.close(1000, "client disconnect");
      this.closed({ code: 1000, reason: "client disconnect", wasClean: true });
    }
  }

  closed(info) {
    this.ws = null;
    this.stopHeartbeat();
    for (const [ref, waiting] of this.replies) {
      this.replies.delete(ref);
      waiting.fail("disconnected");
    }
    for (const channel of this.channels) channel.socketClosed();
    if (this.wanted) {
      const delay = backoff(RECONNECT_STEPS_MS, this.tries);
      this.tries += 1;
      this.reconnectTimer = setTimeout(() => {
        this.reconnectTimer = null;
        this.connect();
      }, delay);
    }
    this.listeners.emit("close", { ...info, willRetry: this.reconnectTimer !== null });
    this.listeners.emit("state", this.state);
  }

  startHeartbeat() {
    this.stopHeartbeat();
    this.heartbeatTimer = setInterval(() => {
      if (this.heartbeatRef) {
        // No answer within a whole interval: the connection is dead even if TCP has not noticed.
        this.heartbeatRef = null;
        this.ws?.close(HEARTBEAT_CLOSE_CODE, "heartbeat timeout");
        if (this.ws) this.closed({ code: HEARTBEAT_CLOSE_CODE, reason: "heartbeat timeout", wasClean: false });
        return;
      }
      const ref = this.makeRef();
      this.heartbeatRef = ref;
      this.request(null, ref, "phoenix", "heartbeat", {}, this.timeoutMs).then(
        () => {
          if (this.heartbeatRef === ref) this.heartbeatRef = null;
        },
        () => {},
      );
    }, this.heartbeatMs);
  }

  stopHeartbeat() {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    this.heartbeatRef = null;
  }

  /** Sends one frame and resolves with its reply `{status, response}`; rejects with a PushError. */
  request(joinRef, ref, topic, event, payload, timeoutMs) {
    return new Promise((resolve, reject) => {
      if (!this.isConnected()) {
        reject(new PushError("disconnected", event, topic));
        return;
      }
      const timer = setTimeout(() => {
        this.replies.delete(ref);
        reject(new PushError("timeout", event, topic));
      }, timeoutMs);
      this.replies.set(ref, {
        topic,
        resolve: (reply) => {
          clearTimeout(timer);
          resolve(reply);
        },
        fail: (kind) => {
          clearTimeout(timer);
          reject(new PushError(kind, event, topic));
        },
      });
      this.ws.send(JSON.stringify([joinRef, ref, topic, event, payload]));
    });
  }

  receive(data) {
    // Courier answers binary only to binary pushes or protobuf joins, which this client never makes.
    if (typeof data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!Array.isArray(frame) || frame.length !== 5) return;
    const [joinRef, ref, topic, event, payload] = frame;
    if (event === "phx_reply" && ref !== null) {
      const waiting = this.replies.get(ref);
      if (waiting && waiting.topic === topic) {
        this.replies.delete(ref);
        waiting.resolve({ status: payload?.status, response: payload?.response ?? {} });
      }
      return;
    }
    for (const channel of this.channels) {
      if (channel.topic === topic) channel.receive(joinRef, event, payload);
    }
  }

  /** A channel on `topic`; `params` may be a function, evaluated at every (re)join. */
  channel(topic, params = {}) {
    const channel = new Channel(this, topic, params);
    this.channels.add(channel);
    return channel;
  }

  remove(channel) {
    this.channels.delete(channel);
  }
}

export class Channel {
  constructor(socket, topic, params) {
    this.socket = socket;
    this.topic = topic;
    this.params = typeof params === "function" ? params : () => params;
    // "closed" → "joining" → "joined"; "errored" waits for a rejoin; "leaving" is final.
    this.state = "closed";
    this.joinRef = null;
    this.wanted = false;
    this.tries = 0;
    this.rejoinTimer = null;
    this.listeners = new Listeners();
    this.waitingForJoin = [];
    this.firstJoin = null;
  }

  /**
   * Server events by name, plus `join` (ok reply's response), `join_error`, `state`, and `*`,
   * which gets every server event as `(event, payload)`.
   */
  on(event, fn) {
    return this.listeners.on(event, fn);
  }

  setState(state) {
    this.state = state;
    this.listeners.emit("state", state);
  }

  /** Joins and keeps the channel joined; resolves with the first ok reply, rejects on its first error. */
  join() {
    this.wanted = true;
    this.firstJoin ??= new Promise((resolve, reject) => {
      const offOk = this.on("join", (response) => {
        offOk();
        offError();
        resolve(response);
      });
      const offError = this.on("join_error", (response) => {
        offOk();
        offError();
        reject(Object.assign(new Error(`join ${this.topic}: ${response?.reason ?? "refused"}`), { response }));
      });
    });
    if (this.state === "closed" || this.state === "errored") this.sendJoin();
    return this.firstJoin;
  }

  sendJoin() {
    clearTimeout(this.rejoinTimer);
    this.rejoinTimer = null;
    if (!this.socket.isConnected()) {
      // socketOpened sends it.
      this.setState("errored");
      return;
    }
    const ref = this.socket.makeRef();
    this.joinRef = ref;
    this.setState("joining");
    this.socket.request(ref, ref, this.topic, "phx_join", this.params(), this.socket.timeoutMs).then(
      ({ status, response }) => {
        if (this.joinRef !== ref || this.state !== "joining") return;
        if (status === "ok") {
          this.tries = 0;
          this.setState("joined");
          this.listeners.emit("join", response);
          const waiting = this.waitingForJoin;
          this.waitingForJoin = [];
          for (const w of waiting) w.go();
        } else {
          this.setState("errored");
          this.listeners.emit("join_error", response);
          this.scheduleRejoin();
        }
      },
      () => {
        if (this.joinRef !== ref || this.state !== "joining") return;
        this.setState("errored");
        this.scheduleRejoin();
      },
    );
  }

  scheduleRejoin() {
    if (!this.wanted || !this.socket.isConnected()) return;
    clearTimeout(this.rejoinTimer);
    const delay = backoff(REJOIN_STEPS_MS, this.tries);
    this.tries += 1;
    this.rejoinTimer = setTimeout(() => {
      this.rejoinTimer = null;
      if (this.wanted && this.state === "errored") this.sendJoin();
    }, delay);
  }

  socketOpened() {
    if (this.wanted && this.state !== "joined" && this.state !== "joining") {
      this.tries = 0;
      this.sendJoin();
    }
  }

  socketClosed() {
    clearTimeout(this.rejoinTimer);
    this.rejoinTimer = null;
    if (this.state !== "closed") this.setState(this.wanted ? "errored" : "closed");
  }

  receive(joinRef, event, payload) {
    // A frame for an older join of this topic (e.g. its phx_close after a rejoin) is not ours.
    if (joinRef !== null && joinRef !== this.joinRef) return;
    if (event === "phx_error") {
      if (this.state === "joined" || this.state === "joining") {
        this.setState("errored");
        this.scheduleRejoin();
      }
      return;
    }
    if (event === "phx_close") {
      if (this.state !== "leaving") {
        // The server closed a channel we still want (e.g. a second join elsewhere): try again.
        this.setState("errored");
        this.scheduleRejoin();
      }
      return;
    }
    this.listeners.emit(event, payload);
    this.listeners.emit("*", event, payload);
  }

  /**
   * Pushes `event` and resolves with the reply `{status, response}`. While the channel is not
   * joined the push waits for the join, up to `timeoutMs` in all, as phoenix.js buffers pushes.
   */
  push(event, payload, { timeoutMs = this.socket.timeoutMs } = {}) {
    const started = Date.now();
    const send = () =>
      this.socket.request(this.joinRef, this.socket.makeRef(), this.topic, event, payload, Math.max(1, timeoutMs - (Date.now() - started)));
    if (this.state === "joined") return send();
    if (!this.wanted) return Promise.reject(new PushError("not joined", event, this.topic));
    return new Promise((resolve, reject) => {
      const waiting = {
        go: () => {
          clearTimeout(timer);
          send().then(resolve, reject);
        },
      };
      const timer = setTimeout(() => {
        this.waitingForJoin = this.waitingForJoin.filter((w) => w !== waiting);
        reject(new PushError("timeout", event, this.topic));
      }, timeoutMs);
      this.waitingForJoin.push(waiting);
    });
  }

  /** Leaves the topic and forgets the channel. */
  leave() {
    this.wanted = false;
    clearTimeout(this.rejoinTimer);
    const wasJoined = this.state === "joined" || this.state === "joining";
    this.setState("leaving");
    this.socket.remove(this);
    if (wasJoined && this.socket.isConnected()) {
      return this.socket
        .request(this.joinRef, this.socket.makeRef(), this.topic, "phx_leave", {}, this.socket.timeoutMs)
        .catch(() => ({ status: "error", response: { reason: "no reply" } }));
    }
    return Promise.resolve({ status: "ok", response: {} });
  }
}

/**
 * A user's inbox (`user:<eid>`) under Courier's rules: each (re)join asks for what comes after
 * the last offset this device has seen, a message at or below that offset is a duplicate and
 * dropped, and `receipt` acknowledges the log up to an offset. `lastSeen` starts from
 * `initialOffset` (e.g. what an earlier page load saw) and `onOffset` is told each time it moves.
 */
export class Inbox {
  constructor(socket, eid, { initialOffset = 0, onOffset = () => {} } = {}) {
    this.eid = eid;
    this.lastSeen = initialOffset;
    this.logEnd = initialOffset;
    this.onOffset = onOffset;
    this.duplicates = 0;
    this.channel = socket.channel(`user:${eid}`, () => ({ after: this.lastSeen }));
    this.listeners = new Listeners();
    this.channel.on("join", (reply) => {
      // A log that shrank (a reset database) would refuse `after`; start over from its end.
      this.logEnd = Math.max(this.logEnd, reply.last_offset ?? 0);
      this.listeners.emit("join", reply);
    });
    this.channel.on("join_error", (reply) => {
      if (/after/.test(reply?.reason ?? "") && this.lastSeen > 0) {
        this.lastSeen = 0;
        this.logEnd = 0;
        this.onOffset(0);
      }
      this.listeners.emit("join_error", reply);
    });
    this.channel.on("message", (message) => {
      const offset = message?.signal_offset ?? 0;
      if (offset <= this.lastSeen) {
        this.duplicates += 1;
        return;
      }
      this.lastSeen = offset;
      this.logEnd = Math.max(this.logEnd, offset);
      this.onOffset(offset);
      this.listeners.emit("message", message);
    });
    const known = ["receipt", "signal", "invite.request", "invite.accept", "invite.reject", "presence_state", "presence_diff"];
    for (const event of known) this.channel.on(event, (payload) => this.listeners.emit(event, payload));
    // Only the server publishes on a user's topic (a client's pushes there are requests), so
    // any other event is something the server or its operator says: `broadcast` hands it on.
    this.channel.on("*", (event, payload) => {
      if (event !== "message" && !known.includes(event)) this.listeners.emit("broadcast", event, payload);
    });
    this.channel.on("state", (state) => this.listeners.emit("state", state));
  }

  on(event, fn) {
    return this.listeners.on(event, fn);
  }

  join() {
    return this.channel.join();
  }

  push(event, payload, options) {
    return this.channel.push(event, payload, options);
  }

  /** Acknowledges the log up to `upTo` as "received" or "read"; resolves with the device's cursor. */
  async receipt(upTo, state) {
    const reply = await this.channel.push("receipt", { up_to: upTo, state });
    if (reply.status !== "ok") throw Object.assign(new Error(reply.response?.reason ?? "receipt refused"), { reply });
    return reply.response.acked_offset;
  }
}
