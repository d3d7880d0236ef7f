// A server restart: SIGTERM closes sockets with 1001 (so every phoenix.js version reconnects),
// and a new process on the same port gets the client and its channel back without app code.
import assert from "node:assert/strict";
import { test } from "node:test";

import { WAIT_MS, connected, push, transcript, waitUntil } from "./support/client.js";
import { startServer } from "./support/server.js";
import { serverPerFile } from "./support/suite.js";

// phoenix.js's default reconnect backoff reaches 2 s after about 1.3 s of failed attempts; 10 s
// leaves room for several of those without waiting on its 5 s steps for ever.
const REJOIN_MS = 10_000;

const suite = serverPerFile();

test("the channel rejoins by itself after the server restarts on the same port", { timeout: 30_000 }, async () => {
  const socket = await connected(suite.server.url); // default reconnect and rejoin settings
  const closeCodes = [];
  socket.onClose((e) => closeCodes.push(e.code));
  const channel = socket.channel("room:restart", {});
  let joins = 0;
  let errors = 0;
  channel.onError(() => errors++);
  channel.join(WAIT_MS).receive("ok", () => joins++);
  await waitUntil(() => joins === 1, WAIT_MS, `first join\n${transcript(socket)}`);

  const { port } = suite.server;
  const stopped = await suite.server.stop();
  assert.deepEqual([stopped.code, stopped.signal], [0, null], `courier exit after SIGTERM\n${suite.server.log()}`);
  await waitUntil(() => closeCodes.length, WAIT_MS, "the client to see the close");
  assert.equal(closeCodes[0], 1001, `close codes seen: ${closeCodes}`);
  assert.ok(errors >= 1, "the channel errors when its transport closes");
  assert.notEqual(channel.state, "joined");

  suite.server = await startServer({ port });
  await waitUntil(() => joins === 2 && channel.state === "joined", REJOIN_MS, `the rejoin\n${transcript(socket)}`);
  assert.ok(socket.isConnected());

  const pong = await push(channel, "ping", { after: "restart" });
  assert.deepEqual(pong, { status: "ok", response: { after: "restart" } }, transcript(socket));
});
