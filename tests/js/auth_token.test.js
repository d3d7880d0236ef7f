// phoenix.js's `authToken` option travels as WebSocket subprotocols ("phoenix" plus
// "base64url.bearer.phx.<b64>"); the handshake only succeeds if the server echoes "phoenix".
// Courier checks that token as a session token, so a real one comes from POST /api/signup.
import assert from "node:assert/strict";
import { test } from "node:test";

import { connected, join, push, transcript } from "./support/client.js";
import { serverPerFile } from "./support/suite.js";

// Signup hashes the password with Argon2id, which takes about a second in a debug build.
const SIGNUP_TIMEOUT_MS = 15_000;

const suite = serverPerFile();

async function signUp(username) {
  const res = await fetch(`http://${suite.server.addr}/api/signup`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username, password: "phoenix-js-password" }),
    signal: AbortSignal.timeout(SIGNUP_TIMEOUT_MS),
  });
  const body = await res.json();
  assert.equal(res.status, 201, `signup: ${JSON.stringify(body)}`);
  assert.equal(typeof body.session, "string");
  return body.session;
}

// A refused handshake only shows up as "Unexpected server response: 403" on the client; the
// server's log says why, so attach it.
function withServerLog(err) {
  throw new Error(`${err.message}\nserver log:\n${suite.server.log()}`);
}

test("a socket with a session token as authToken negotiates the phoenix subprotocol and joins", async () => {
  const token = await signUp("phoenix-js");
  const socket = await connected(suite.server.url, { authToken: token }).catch(withServerLog);
  // `ws` fails the handshake itself when no subprotocol is echoed; this names the one agreed on.
  assert.equal(socket.conn.protocol, "phoenix");

  const channel = socket.channel("room:auth", {});
  assert.deepEqual(await join(channel), { status: "ok", response: {} }, transcript(socket));
  assert.deepEqual(await push(channel, "ping", { via: "authToken" }), { status: "ok", response: { via: "authToken" } });
});

test("an unknown authToken is refused at the handshake", async () => {
  await assert.rejects(connected(suite.server.url, { authToken: "some-token" }), /Unexpected server response: 403/);
});
