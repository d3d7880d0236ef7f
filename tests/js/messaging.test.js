// user:<eid> messaging with the official phoenix.js client (README "### Channels"): two users with
// two devices each, every device a Socket of its own joined to its user's topic. Sending and the
// sender's ack, fan-out to the receiver's devices and the sender's other devices, read receipts,
// a device resuming with `after` after a reconnect, and refused messages.
//
// Payloads are proto3 JSON with the proto field names: `bytes` as base64, int64 (timestamp,
// peer.offset, peer.peer_offset) as strings, int32 (signal_offset, user_offset, ...) as numbers.
import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { WAIT_MS, api, connect, connected, disconnectAll, join, push, sleep, transcript, waitUntil } from "./support/client.js";
import { jsonFrames } from "./support/frames.js";
import { serverPerFile } from "./support/suite.js";

// Long enough for a stray frame to arrive on loopback, short enough to keep the suite quick.
const QUIET_MS = 300;
const PASSWORD = "phoenix-js-password";
// Seed 004: signal_type 2 = DEVICE (the sender's own log), 3 = RECEIVER; signal_request 2 = push.
const DEVICE = 2;
const RECEIVER = 3;
// MessagePeerAckSignal.method: 1 sent, 2 delivered, 3 read.
const SENT = 1;
const READ = 3;

const suite = serverPerFile();
afterEach(() => disconnectAll());

// Every test gets users of its own, so offsets start at 1 whatever ran before on this server.
let run = 0;

/** Signs `username` up (the phone's session) and in again (the laptop's session). */
async function account(username) {
  const up = await api(suite.server, "/api/signup", { username, password: PASSWORD });
  assert.equal(up.status, 201, `signup ${username}: ${JSON.stringify(up.body)}`);
  const signin = await api(suite.server, "/api/signin", { username, password: PASSWORD });
  assert.equal(signin.status, 200, `signin ${username}: ${JSON.stringify(signin.body)}`);
  for (const { body } of [up, signin]) {
    assert.equal(body.username, username);
    assert.equal(typeof body.session, "string");
  }
  return { eid: username, sessions: { phone: up.body.session, laptop: signin.body.session } };
}

/**
 * One device: a Socket connected with `{token, device}` and `user:<eid>` joined with its params
 * as a function, so that phoenix.js's own rejoin resumes after the last offset the device saw.
 */
async function openDevice(user, device) {
  const socket = await connected(suite.server.url, { params: { token: user.sessions[device], device } });
  const dev = { eid: user.eid, device, socket, messages: [], receipts: [], lastSeen: 0 };
  dev.channel = socket.channel(`user:${user.eid}`, () => ({ after: dev.lastSeen }));
  dev.channel.on("message", (m) => {
    dev.messages.push(m);
    dev.lastSeen = Math.max(dev.lastSeen, m.signal_offset);
  });
  dev.channel.on("receipt", (r) => dev.receipts.push(r));
  const joined = await join(dev.channel);
  assert.equal(joined.status, "ok", `join user:${user.eid} from ${device}\n${transcript(socket)}`);
  assert.deepEqual(
    { ...joined.response, identity: { ...joined.response.identity, node: "<node>" } },
    {
      identity: { eid: user.eid, connection_resource_id: device, node: "<node>" },
      invites: [],
      last_offset: 0,
      acked_offset: 0,
    },
    transcript(socket),
  );
  assert.equal(typeof joined.response.identity.node, "string");
  return dev;
}

/** alice and bob, each with a phone and a laptop joined to their own `user:` topic. */
async function twoUsersTwoDevices() {
  run += 1;
  const [alice, bob] = await Promise.all([account(`alice-${run}`), account(`bob-${run}`)]);
  const [alicePhone, aliceLaptop, bobPhone, bobLaptop] = await Promise.all([
    openDevice(alice, "phone"),
    openDevice(alice, "laptop"),
    openDevice(bob, "phone"),
    openDevice(bob, "laptop"),
  ]);
  return {
    alice: { ...alice, phone: alicePhone, laptop: aliceLaptop },
    bob: { ...bob, phone: bobPhone, laptop: bobLaptop },
  };
}

let ids = 0;
const b64 = (text) => Buffer.from(text).toString("base64");
/** A Message from the client: an id, the recipient and a base64 payload; the server does the rest. */
function outgoing(to, body) {
  ids += 1;
  return { id: `msg-${ids}`, to: { eid: to.eid }, payload: b64(JSON.stringify({ body })) };
}

/** Every device's wire conversation, for assertion messages. */
function transcripts(...devices) {
  return devices.map((d) => `--- ${d.eid}/${d.device}\n${transcript(d.socket)}`).join("\n");
}

/** waitUntil, reporting the devices' transcripts as they are when the wait gives up. */
async function until(predicate, what, ...devices) {
  try {
    return await waitUntil(predicate, WAIT_MS, what);
  } catch (err) {
    throw new Error(`${err.message}\n${transcripts(...devices)}`);
  }
}

const isDigits = (s) => typeof s === "string" && /^[0-9]+$/.test(s);

/** Sends `message` from `dev`, asserts the ok reply is the sent ack, and returns it. */
async function send(dev, to, message, { offset, peerOffset = "0" }) {
  const ack = await push(dev.channel, "message", message);
  assert.equal(ack.status, "ok", `send ${message.id}\n${transcript(dev.socket)}`);
  const signal = ack.response;
  assert.ok(isDigits(signal.timestamp), `ack timestamp ${JSON.stringify(signal.timestamp)} is an int64 string`);
  assert.equal(typeof signal.to?.node, "string", JSON.stringify(signal));
  assert.deepEqual(
    { ...signal, timestamp: "<ts>", to: { ...signal.to, node: "<node>" } },
    {
      to: { eid: dev.eid, connection_resource_id: dev.device, node: "<node>" },
      from: { eid: to.eid },
      message_id: message.id,
      method: SENT,
      timestamp: "<ts>",
      status_code: 200,
      peer: { from: dev.eid, to: to.eid, offset, peer_offset: peerOffset },
    },
    transcript(dev.socket),
  );
  return signal;
}

/** The Message a device gets for `sent` (as the client sent it, from `sender`). */
function expected(sent, sender, receiverEid, { signalOffset, userOffset, signalType, timestamp, read = false }) {
  return {
    id: sent.id,
    signal_offset: signalOffset,
    user_offset: userOffset,
    from: { eid: sender.eid, connection_resource_id: sender.device },
    to: { eid: receiverEid },
    timestamp,
    payload: sent.payload,
    encryption_type: "",
    encrypted: "",
    signature: "",
    signal_type: signalType,
    signal_offset_state: true,
    signal_ack_state: { send: true, received: read, read },
    signal_request: 2,
  };
}

const offsets = (dev) => dev.messages.map((m) => m.signal_offset);

describe("user:<eid> messaging with two devices per user", () => {
  test("a message is acked to its sender and reaches the receiver's devices and the sender's other devices", async () => {
    const { alice, bob } = await twoUsersTwoDevices();
    const everyone = [alice.phone, alice.laptop, bob.phone, bob.laptop];

    // alice's phone sends twice, then bob's phone answers: one conversation, user_offset 1, 2, 3.
    const sent = [outgoing(bob, "hi bob"), outgoing(bob, "still there?"), outgoing(alice, "yes")];
    const acks = [
      await send(alice.phone, bob, sent[0], { offset: "1" }),
      await send(alice.phone, bob, sent[1], { offset: "2" }),
      await send(bob.phone, alice, sent[2], { offset: "3" }),
    ];

    await until(
      () => bob.phone.messages.length >= 2 && bob.laptop.messages.length >= 3 && alice.laptop.messages.length >= 3 && alice.phone.messages.length >= 1,
      "every device to get its messages",
      ...everyone,
    );
    // Anything the server should not have sent (an echo to the sending device) is here by now.
    await sleep(QUIET_MS);
    const context = transcripts(...everyone);

    // The server stamps the timestamp once; every copy of a message carries that one.
    const stamps = bob.laptop.messages.map((m) => m.timestamp);
    stamps.forEach((ts) => assert.ok(isDigits(ts), `timestamp ${JSON.stringify(ts)} is an int64 string`));
    const [a1, a2, b1] = [
      { sender: alice.phone, to: bob.eid, ts: stamps[0] },
      { sender: alice.phone, to: bob.eid, ts: stamps[1] },
      { sender: bob.phone, to: alice.eid, ts: stamps[2] },
    ];
    const placement = (i, m, owner) => ({ signalOffset: i + 1, userOffset: i + 1, timestamp: m.ts, signalType: owner === m.to ? RECEIVER : DEVICE });
    const messageFor = (i, m, owner) => expected(sent[i], m.sender, m.to, placement(i, m, owner));

    // bob's devices: alice's two as RECEIVER; bob's laptop also bob's own reply, as DEVICE.
    assert.deepEqual(bob.phone.messages, [messageFor(0, a1, bob.eid), messageFor(1, a2, bob.eid)], context);
    assert.deepEqual(bob.laptop.messages, [messageFor(0, a1, bob.eid), messageFor(1, a2, bob.eid), messageFor(2, b1, bob.eid)], context);
    // alice's laptop: her phone's two as DEVICE, bob's reply as RECEIVER; her phone only the reply.
    assert.deepEqual(alice.laptop.messages, [messageFor(0, a1, alice.eid), messageFor(1, a2, alice.eid), messageFor(2, b1, alice.eid)], context);
    assert.deepEqual(alice.phone.messages, [messageFor(2, b1, alice.eid)], context);
    // The acks' timestamps are the server's clock at commit, not the message's.
    acks.forEach((ack) => assert.ok(Number(ack.timestamp) >= Number(stamps[0]), JSON.stringify(ack)));

    // Not even a frame phoenix.js might have dropped: the sending socket gets no echo of its sends.
    const echoes = (dev, ownIds) =>
      jsonFrames(dev.socket, "in", { event: "message" }).filter((f) => ownIds.includes(f[4]?.id));
    assert.deepEqual(echoes(alice.phone, [sent[0].id, sent[1].id]), [], context);
    assert.deepEqual(echoes(bob.phone, [sent[2].id]), [], context);
    // Events are broadcasts: no join_ref, no ref.
    for (const frame of jsonFrames(bob.laptop.socket, "in", { event: "message" })) {
      assert.deepEqual(frame.slice(0, 4), [null, null, `user:${bob.eid}`, "message"], context);
    }
  });

  test("a read receipt acks the conversation to the sender's devices and the reader's other devices", async () => {
    const { alice, bob } = await twoUsersTwoDevices();
    const everyone = [alice.phone, alice.laptop, bob.phone, bob.laptop];

    // bob's log: 1 from alice, 2 bob's own (from his laptop), 3 from alice again.
    const first = outgoing(bob, "one");
    await send(alice.phone, bob, first, { offset: "1" });
    await send(bob.laptop, alice, outgoing(alice, "two"), { offset: "2" });
    const third = outgoing(bob, "three");
    await send(alice.phone, bob, third, { offset: "3" });
    await until(() => bob.phone.messages.length === 3, "bob's phone to get all three", bob.phone);
    const upTo = bob.phone.messages.at(-1).signal_offset;
    assert.equal(upTo, 3, transcript(bob.phone.socket));

    const receipt = await push(bob.phone.channel, "receipt", { up_to: upTo, state: "read" });
    assert.deepEqual(receipt, { status: "ok", response: { acked_offset: 3 } }, transcript(bob.phone.socket));

    await until(
      () => alice.phone.receipts.length && alice.laptop.receipts.length && bob.laptop.receipts.length,
      "the receipt event on alice's devices and bob's laptop",
      ...everyone,
    );
    await sleep(QUIET_MS);
    const context = transcripts(...everyone);

    // One conversation moved, so one receipt: the newest of alice's messages bob has read.
    const signal = alice.phone.receipts[0];
    assert.ok(isDigits(signal.timestamp), JSON.stringify(signal));
    const expectedReceipt = {
      to: { eid: alice.eid },
      from: { eid: bob.eid, connection_resource_id: "phone" },
      message_id: third.id,
      method: READ,
      timestamp: signal.timestamp,
      status_code: 200,
      peer: { from: alice.eid, to: bob.eid, offset: "3", peer_offset: "3" },
    };
    assert.deepEqual(alice.phone.receipts, [expectedReceipt], context);
    assert.deepEqual(alice.laptop.receipts, [expectedReceipt], context);
    assert.deepEqual(bob.laptop.receipts, [expectedReceipt], context);
    assert.deepEqual(bob.phone.receipts, [], context);
    assert.deepEqual(jsonFrames(bob.phone.socket, "in", { event: "receipt" }), [], context);

    // The next ack tells alice how far bob has acknowledged (read implies received).
    await send(alice.phone, bob, outgoing(bob, "four"), { offset: "4", peerOffset: "3" });
    // A receipt never moves the cursor back.
    const back = await push(bob.phone.channel, "receipt", { up_to: 1, state: "received" });
    assert.deepEqual(back, { status: "ok", response: { acked_offset: 3 } }, transcript(bob.phone.socket));
  });

  test("a device that reconnects resumes after the last offset it saw: missed messages in order, then live ones", async () => {
    const { alice, bob } = await twoUsersTwoDevices();
    const laptop = bob.laptop;
    const everyone = [alice.phone, alice.laptop, bob.phone, laptop];

    // Offsets 1 and 2 of bob's log reach his laptop live.
    await send(alice.phone, bob, outgoing(bob, "before 1"), { offset: "1" });
    await send(alice.phone, bob, outgoing(bob, "before 2"), { offset: "2" });
    await until(() => laptop.lastSeen === 2, "bob's laptop to see offset 2", laptop);

    await new Promise((resolve) => laptop.socket.disconnect(resolve));
    assert.notEqual(laptop.channel.state, "joined");

    // While the laptop is away: alice's two devices write to bob, and bob's phone answers (a
    // DEVICE message in bob's log for the laptop), so offsets 3..7 are waiting for it.
    const missed = [
      [alice.phone, outgoing(bob, "missed 3")],
      [alice.laptop, outgoing(bob, "missed 4")],
      [bob.phone, outgoing(alice, "missed 5")],
      [alice.phone, outgoing(bob, "missed 6")],
      [alice.laptop, outgoing(bob, "missed 7")],
    ];
    for (const [index, [dev, message]] of missed.entries()) {
      await send(dev, dev === bob.phone ? alice : bob, message, { offset: String(index + 3) });
    }
    // bob's phone has read everything; the laptop's own cursor stays at 0, so only `after`
    // (not the server's cursor) can keep offsets 1 and 2 from coming again.
    await until(() => bob.phone.lastSeen === 7, "bob's phone to see offset 7", bob.phone);
    const read = await push(bob.phone.channel, "receipt", { up_to: 7, state: "read" });
    assert.deepEqual(read, { status: "ok", response: { acked_offset: 7 } }, transcript(bob.phone.socket));

    // Back online: phoenix.js rejoins the errored channel by itself, evaluating the params
    // function again. Messages sent while the rejoin and its catch-up are in flight must
    // follow on without a gap or a duplicate.
    const joinsBefore = jsonFrames(laptop.socket, "out", { event: "phx_join" }).length;
    await connect(laptop.socket);
    const during = [outgoing(bob, "during 8"), outgoing(bob, "during 9")];
    const duringAcks = during.map((m) => push(alice.phone.channel, "message", m));
    await until(() => laptop.channel.state === "joined", "bob's laptop to rejoin", laptop);
    await until(() => laptop.lastSeen >= 9, "bob's laptop to catch up to offset 9", ...everyone);
    for (const [i, ack] of (await Promise.all(duringAcks)).entries()) {
      assert.equal(ack.status, "ok", transcript(alice.phone.socket));
      assert.equal(ack.response.peer.offset, String(8 + i), JSON.stringify(ack.response));
    }

    // The rejoin asked for what came after offset 2 and was told where the log and the
    // laptop's cursor are.
    const joins = jsonFrames(laptop.socket, "out", { event: "phx_join" });
    assert.equal(joins.length, joinsBefore + 1, transcript(laptop.socket));
    const rejoin = joins.at(-1);
    assert.deepEqual(rejoin[4], { after: 2 }, transcript(laptop.socket));
    const rejoinReply = jsonFrames(laptop.socket, "in", { event: "phx_reply" }).find((f) => f[1] === rejoin[1]);
    assert.equal(rejoinReply?.[4]?.status, "ok", transcript(laptop.socket));
    const { last_offset: lastOffset, acked_offset: ackedOffset } = rejoinReply[4].response;
    assert.equal(ackedOffset, 0, transcript(laptop.socket));
    assert.ok(lastOffset >= 7 && lastOffset <= 9, `last_offset ${lastOffset}\n${transcript(laptop.socket)}`);

    // Then live again.
    const live = outgoing(bob, "live 10");
    await send(alice.phone, bob, live, { offset: "10", peerOffset: "7" });
    await until(() => laptop.lastSeen === 10, "bob's laptop to get offset 10 live", ...everyone);
    await sleep(QUIET_MS);
    const context = transcripts(...everyone);

    assert.deepEqual(offsets(laptop), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], context);
    const allIds = laptop.messages.map((m) => m.id);
    assert.deepEqual(allIds.slice(2), [...missed.map(([, m]) => m.id), ...during.map((m) => m.id), live.id], context);
    assert.deepEqual(
      laptop.messages.map((m) => m.signal_type),
      [RECEIVER, RECEIVER, RECEIVER, RECEIVER, DEVICE, RECEIVER, RECEIVER, RECEIVER, RECEIVER, RECEIVER],
      context,
    );
    // The catch-up carries the state the stored messages are in: bob's phone read alice's up to
    // 7, while bob's own message (5) is still unacknowledged by alice.
    const caughtUp = laptop.messages.slice(2, 7);
    for (const m of caughtUp) {
      assert.equal(m.signal_offset_state, true, JSON.stringify(m));
      assert.equal(m.signal_request, 2, JSON.stringify(m));
      const readByBob = m.signal_type === RECEIVER;
      assert.deepEqual(m.signal_ack_state, { send: true, received: readByBob, read: readByBob }, JSON.stringify(m));
    }
    assert.deepEqual(laptop.messages.at(-1).signal_ack_state, { send: true, received: false, read: false }, context);
    // The same on the wire, where phoenix.js cannot have dropped a duplicate.
    assert.deepEqual(
      jsonFrames(laptop.socket, "in", { event: "message" }).map((f) => f[4].signal_offset),
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
      context,
    );
    // bob's phone, which stayed, got the same log once each, minus its own send.
    assert.deepEqual(offsets(bob.phone), [1, 2, 3, 4, 6, 7, 8, 9, 10], context);
  });

  test("a refused message gets an error reply with its status code and takes no offset", async () => {
    const { alice, bob } = await twoUsersTwoDevices();
    const everyone = [alice.phone, alice.laptop, bob.phone, bob.laptop];
    const good = outgoing(bob, "ok");
    const cases = [
      ["no to", { id: "bad-1", payload: good.payload }, 400, "invalid_input"],
      ["to yourself", { id: "bad-2", to: { eid: alice.eid }, payload: good.payload }, 400, "invalid_input"],
      ["no content", { id: "bad-3", to: { eid: bob.eid } }, 400, "invalid_input"],
      // The payload does not decode as a Message; the server still echoes its id.
      ["an unknown JSON field", { ...good, id: "bad-4", colour: "blue" }, 400, "invalid_input"],
      ["a forged from", { ...good, id: "bad-5", from: { eid: bob.eid } }, 403, "source_mismatch"],
      ["an unknown recipient", { ...good, id: "bad-6", to: { eid: `nobody-${run}` } }, 404, "unknown_recipient"],
    ];
    for (const [what, message, statusCode, code, messageId = message.id] of cases) {
      const refused = await push(alice.phone.channel, "message", message);
      assert.equal(refused.status, "error", `${what}\n${transcript(alice.phone.socket)}`);
      const { reason, ...rest } = refused.response;
      assert.equal(typeof reason, "string", `${what}: ${JSON.stringify(refused.response)}`);
      assert.ok(reason.length > 0, what);
      assert.deepEqual(
        rest,
        { code, status_code: statusCode, message_id: messageId, signal_offset_state: false },
        `${what}: ${JSON.stringify(refused.response)}`,
      );
    }

    // Nothing was stored or delivered: the next good message is the conversation's first and
    // bob's log's first.
    await send(alice.phone, bob, good, { offset: "1" });
    await until(() => bob.phone.messages.length && bob.laptop.messages.length, "bob's devices to get the good message", bob.phone, bob.laptop);
    // A retry of a stored id returns the original ack and delivers nothing again.
    await send(alice.phone, bob, good, { offset: "1" });
    await sleep(QUIET_MS);
    const context = transcripts(...everyone);
    assert.deepEqual(offsets(bob.phone), [1], context);
    assert.deepEqual(offsets(bob.laptop), [1], context);
    assert.deepEqual(offsets(alice.laptop), [1], context);
    assert.deepEqual(bob.phone.messages[0].id, good.id, context);
    assert.deepEqual(alice.phone.messages, [], context);
  });
});
