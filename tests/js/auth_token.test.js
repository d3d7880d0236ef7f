// phoenix.js's `authToken` option travels as WebSocket subprotocols ("phoenix" plus
// "base64url.bearer.phx.<b64>"); the handshake only succeeds if the server echoes "phoenix".
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connected, disconnectAll, join, push, transcript } from "./support/client.js";
import { startServer } from "./support/server.js";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await disconnectAll();
  await server?.stop();
});

test("a socket with authToken connects, negotiates the phoenix subprotocol and joins", async () => {
  // A refused handshake only shows up as "Unexpected server response: 403" on the client; the
  // server's log says why, so attach it.
  const socket = await connected(server.url, { authToken: "some-token" }).catch((err) => {
    throw new Error(`${err.message}\nserver log:\n${server.log()}`);
  });
  // `ws` fails the handshake itself when no subprotocol is echoed; this names the one agreed on.
  assert.equal(socket.conn.protocol, "phoenix");

  const channel = socket.channel("room:auth", {});
  assert.deepEqual(await join(channel), { status: "ok", response: {} }, transcript(socket));
  assert.deepEqual(await push(channel, "ping", { via: "authToken" }), { status: "ok", response: { via: "authToken" } });
});
