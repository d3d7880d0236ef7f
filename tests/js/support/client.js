// phoenix.js plumbing for Node: the `ws` transport, promise wrappers and bounded waits.
import { Socket } from "phoenix";
import WebSocket from "ws";

// Any single expectation should be met in milliseconds; this only bounds a broken server.
export const WAIT_MS = 3_000;

/**
 * The `ws` WebSocket class, plus a record of every frame on the wire in `frames`. phoenix.js decodes
 * frames before anything else sees them, so this is the only place to check exact wire shapes
 * (join_ref, ref) and to print the conversation when an assertion fails.
 */
function recordingTransport(frames) {
  return class WebSocketTransport extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      this.on("open", () => frames.push({ dir: "open", at: Date.now() }));
      this.on("close", (code) => frames.push({ dir: "close", code, at: Date.now() }));
      this.on("message", (data, isBinary) => frames.push({ dir: "in", at: Date.now(), ...describe(data, isBinary) }));
    }

    send(data, ...rest) {
      frames.push({ dir: "out", at: Date.now(), ...describe(data, typeof data !== "string") });
      return super.send(data, ...rest);
    }
  };
}

function describe(data, isBinary) {
  if (isBinary) {
    // ws hands over an ArrayBuffer (binaryType "arraybuffer") or a Buffer; copy either
    const view = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return { binary: Uint8Array.from(view) };
  }
  const text = data.toString();
  try {
    return { json: JSON.parse(text) };
  } catch {
    return { text };
  }
}

const sockets = new Set();

/**
 * A phoenix Socket over `ws`. Each Socket keeps the frames of all its connections in `socket.frames`
 * (a new connection after a reconnect appends to the same list).
 */
export function newSocket(url, opts = {}) {
  const frames = [];
  const socket = new Socket(url, { transport: recordingTransport(frames), ...opts });
  socket.frames = frames;
  sockets.add(socket);
  return socket;
}

/**
 * Connects and resolves on open; rejects on the first error or close, or after `ms`. A failed
 * socket is disconnected, as phoenix.js would otherwise keep retrying in the background.
 */
export async function connect(socket, ms = WAIT_MS) {
  let refs = [];
  const opened = new Promise((resolve, reject) => {
    refs = [
      socket.onOpen(() => resolve()),
      socket.onError((err) => reject(new Error(`socket error before open: ${err?.message ?? err}`))),
      socket.onClose((e) => reject(new Error(`socket closed before open (code ${e?.code})`))),
    ];
    socket.connect();
  });
  try {
    await withTimeout(opened, ms, "socket open");
  } catch (err) {
    socket.disconnect();
    throw err;
  } finally {
    socket.off(refs);
  }
}

export async function connected(url, opts = {}) {
  const socket = newSocket(url, opts);
  await connect(socket);
  return socket;
}

/**
 * Resolves `{status, response}` from the first reply (`ok`, `error`, or phoenix.js's own `timeout`)
 * to a Push. The push timeout is kept short so a missing reply fails quickly.
 */
export function reply(push, ms = WAIT_MS) {
  return withTimeout(
    new Promise((resolve) => {
      for (const status of ["ok", "error", "timeout"]) {
        push.receive(status, (response) => resolve({ status, response }));
      }
    }),
    ms + 1_000,
    `reply to ${push.event} on ${push.channel.topic}`,
  );
}

export function join(channel, ms = WAIT_MS) {
  return reply(channel.join(ms), ms);
}

export function push(channel, event, payload, ms = WAIT_MS) {
  return reply(channel.push(event, payload, ms), ms);
}

/** Collects the payloads of `event` on `channel`. */
export function collect(channel, event) {
  const seen = [];
  channel.on(event, (payload) => seen.push(payload));
  return seen;
}

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Polls `predicate` until it is truthy; rejects after `ms` naming `what`. */
export async function waitUntil(predicate, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Frames a socket sent or received, with milliseconds since the first one, for assertion messages. */
export function transcript(socket) {
  const start = socket.frames[0]?.at ?? 0;
  return socket.frames
    .map((f) => {
      const at = `[${String(f.at - start).padStart(5)} ms]`;
      if (f.dir === "open") return `${at} open`;
      if (f.dir === "close") return `${at} close ${f.code}`;
      const arrow = f.dir === "out" ? "->" : "<-";
      if (f.binary) return `${at} ${arrow} binary [${Array.from(f.binary).join(",")}]`;
      return `${at} ${arrow} ${f.json ? JSON.stringify(f.json) : f.text}`;
    })
    .join("\n");
}

/** Disconnects every socket made by `newSocket`, bounded so a stuck close cannot hang the suite. */
export async function disconnectAll(ms = WAIT_MS) {
  const all = [...sockets];
  sockets.clear();
  await Promise.allSettled(
    all.map((socket) => withTimeout(new Promise((resolve) => socket.disconnect(resolve)), ms, "disconnect")),
  );
}

export function bytes(buffer) {
  return Array.from(new Uint8Array(buffer));
}

// Signup and signin hash the password with Argon2id, about a second each in a debug build.
const ACCOUNT_TIMEOUT_MS = 15_000;

/** POSTs `body` as JSON to `route` of `server` (e.g. `/api/signup`); resolves `{status, body}`. */
export async function api(server, route, body) {
  const res = await fetch(`http://${server.addr}${route}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(ACCOUNT_TIMEOUT_MS),
  });
  return { status: res.status, body: await res.json() };
}
