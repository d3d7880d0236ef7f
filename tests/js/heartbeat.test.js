// Heartbeats: phoenix.js closes the socket if a heartbeat reply (same ref) does not arrive within
// one interval, so a short interval makes a slow or wrong reply show up as a close.
import assert from "node:assert/strict";
import { test } from "node:test";

import { WAIT_MS, connected, join, sleep, transcript, waitUntil, withTimeout } from "./support/client.js";
import { jsonFrames } from "./support/frames.js";
import { serverPerFile } from "./support/suite.js";

const INTERVAL_MS = 200;
const HEARTBEATS = 6;

const suite = serverPerFile();

test(`the socket stays open across ${HEARTBEATS} heartbeats at ${INTERVAL_MS} ms`, async () => {
  const socket = await connected(suite.server.url, { heartbeatIntervalMs: INTERVAL_MS });
  const trouble = [];
  socket.onError((err) => trouble.push(`error: ${err?.message ?? err}`));
  socket.onClose((e) => trouble.push(`close: ${e?.code}`));
  const acks = [];
  socket.onMessage((msg) => {
    if (msg.topic === "phoenix" && msg.event === "phx_reply") acks.push(msg);
  });
  const channel = socket.channel("room:heartbeat", {});
  assert.equal((await join(channel)).status, "ok");

  await waitUntil(() => acks.length >= HEARTBEATS || trouble.length, HEARTBEATS * INTERVAL_MS * 3, `${HEARTBEATS} heartbeat replies`);
  assert.deepEqual(trouble, [], transcript(socket));
  assert.ok(socket.isConnected());
  assert.equal(channel.state, "joined");

  // Each heartbeat is answered exactly as Phoenix does: join_ref null, the same ref, ok {}.
  const sent = jsonFrames(socket, "out", { topic: "phoenix", event: "heartbeat" });
  const replies = jsonFrames(socket, "in", { topic: "phoenix", event: "phx_reply" });
  assert.ok(sent.length >= HEARTBEATS);
  for (const [, ref] of sent.slice(0, HEARTBEATS)) {
    assert.deepEqual(
      replies.find((m) => m[1] === ref),
      [null, ref, "phoenix", "phx_reply", { status: "ok", response: {} }],
      transcript(socket),
    );
  }
});

test("socket.ping() gets its reply and reports a round-trip time", async () => {
  const socket = await connected(suite.server.url, { heartbeatIntervalMs: INTERVAL_MS });
  const rtt = await withTimeout(
    new Promise((resolve, reject) => {
      if (!socket.ping(resolve)) reject(new Error("ping() refused: socket not connected"));
    }),
    WAIT_MS,
    "ping reply",
  );
  assert.ok(Number.isFinite(rtt) && rtt >= 0 && rtt < WAIT_MS, `rtt ${rtt}`);
  // Pings share the heartbeat path; the regular heartbeats keep working after one.
  await sleep(INTERVAL_MS * 3);
  assert.ok(socket.isConnected(), transcript(socket));
});
