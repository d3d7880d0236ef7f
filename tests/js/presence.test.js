// Presence and status signals with the official phoenix.js client: phoenix.js `Presence` on
// `user:<eid>` (a user's devices), `presence:<eid>` (watching a user go online and offline) and
// `room:<name>`; `signal` (typing indicators, relayed live, never stored, expiring); and read
// receipts agreeing on every screen. Devices are killed with `ws`'s terminate(), which drops the
// TCP connection without a close frame, as a phone that loses its network would.
import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";
import { Presence } from "phoenix";

import { WAIT_MS, api, collect, connect, connected, disconnectAll, join, push, reply, sleep, transcript, waitUntil } from "./support/client.js";
import { jsonFrames } from "./support/frames.js";
import { serverPerFile } from "./support/suite.js";

// Long enough for a stray frame to arrive on loopback, short enough to keep the suite quick.
const QUIET_MS = 300;
const PASSWORD = "phoenix-js-password";
const TYPING_TIMEOUT_MS = 500;
// A typing timeout that fits in one bounded wait. A killed socket's presences leave when its
// lease drops; QUIET_MS after a kill would show a second leave of the same presence.
const CONFIG = `[messaging]\ntyping_timeout_ms = ${TYPING_TIMEOUT_MS}\n`;
// Seed 004: signal_request 1 pull, 2 push; Signal.type 1 REQUEST, 2 RESPONSE; signal_type 1 the
// sender's own answer, 2 the sender's other devices, 3 the receiver's; statuses as named.
const PULL = 1;
const PUSH = 2;
const [REQUEST, RESPONSE] = [1, 2];
const [SENDER, DEVICE, RECEIVER] = [1, 2, 3];
const [CHATTING, TYPING, PAUSED] = [1, 4, 5];
const READ = 3;

const suite = serverPerFile({ config: CONFIG });
afterEach(() => disconnectAll());

// Every test gets users of its own: presence topics, rate-limit buckets and logs start empty.
let run = 0;
function names(...bases) {
  run += 1;
  return bases.map((base) => `${base}-${run}`);
}

/** Signs `username` up (the first device's session) and in again for each other device. */
async function account(username, devices = ["phone", "laptop"]) {
  const sessions = {};
  for (const [i, device] of devices.entries()) {
    const res = await api(suite.server, i === 0 ? "/api/signup" : "/api/signin", { username, password: PASSWORD });
    assert.equal(res.status, i === 0 ? 201 : 200, `${username}: ${JSON.stringify(res.body)}`);
    sessions[device] = res.body.session;
  }
  return { eid: username, sessions };
}

// phoenix.js would reconnect a killed socket within milliseconds and track it again; a killed
// device has to stay dead for its leave to be observable.
const KILLABLE = { reconnectAfterMs: () => 3_600_000 };
const kill = (socket) => socket.conn.terminate();

/**
 * phoenix.js Presence on `channel`, made before the join so the presence_state is not missed,
 * plus what its callbacks saw: `synced` is the sorted key list as of the last onSync.
 */
function watch(channel) {
  const presence = new Presence(channel);
  const seen = { presence, synced: null, joins: [], leaves: [] };
  presence.onSync(() => {
    seen.synced = presence.list((key) => key).sort();
  });
  // A diff may repeat a join the presence_state already held (the server never simplifies a
  // window's diff), and phoenix.js calls onJoin for it again; only a new phx_ref is a join.
  presence.onJoin((key, current, joined) => {
    const had = current?.metas.map((m) => m.phx_ref) ?? [];
    if (joined.metas.some((m) => !had.includes(m.phx_ref))) seen.joins.push(key);
  });
  presence.onLeave((key) => seen.leaves.push(key));
  return seen;
}

const metasBy = (dev) => Object.fromEntries(dev.presence.presence.list((key, p) => [key, p.metas]));
const synced = (devs, keys) => devs.every((d) => JSON.stringify(d.presence.synced) === JSON.stringify(keys));

/** A socket with `topic` joined (`payload` as join params) and a Presence on it. */
async function open(topic, { params, payload = {}, socketOpts = {} } = {}) {
  const socket = await connected(suite.server.url, { params, ...socketOpts });
  const channel = socket.channel(topic, payload);
  const dev = { name: `${params?.device ?? "anonymous"} on ${topic}`, socket, channel, presence: watch(channel) };
  dev.joined = await join(channel);
  assert.equal(dev.joined.status, "ok", `join ${topic}\n${transcript(socket)}`);
  return dev;
}

/** One device of `user` on `user:<eid>`, recording its signal, receipt and message events. */
async function device(user, name, opts = {}) {
  const dev = await open(`user:${user.eid}`, { params: { token: user.sessions[name], device: name }, ...opts });
  Object.assign(dev, { eid: user.eid, device: name });
  for (const event of ["signal", "receipt", "message"]) dev[`${event}s`] = collect(dev.channel, event);
  return dev;
}

function transcripts(...devs) {
  return devs.map((d) => `--- ${d.eid ?? ""}/${d.name}\n${transcript(d.socket)}`).join("\n");
}

/** waitUntil, reporting the devices' transcripts as they are when the wait gives up. */
async function until(predicate, what, ...devs) {
  try {
    return await waitUntil(predicate, WAIT_MS, what);
  } catch (err) {
    throw new Error(`${err.message}\n${transcripts(...devs)}`);
  }
}

/** Asserts a tracked meta: the server's fields have the right types, the rest is `extra`. */
function assertMeta(meta, extra, context) {
  assert.equal(typeof meta?.online_at, "number", context);
  assert.equal(typeof meta.node, "string", context);
  assert.match(meta.phx_ref, /^[A-Za-z0-9_-]{16}$/, context);
  assert.deepEqual({ ...meta, online_at: 0, node: "", phx_ref: "" }, { online_at: 0, node: "", phx_ref: "", ...extra }, context);
}

/** How many metas left under `key` over all presence_diff frames a socket got on `topic`. */
const wireLeaves = (socket, topic, key) =>
  jsonFrames(socket, "in", { topic, event: "presence_diff" }).reduce((n, f) => n + (f[4].leaves[key]?.metas.length ?? 0), 0);

const isDigits = (s) => typeof s === "string" && /^[0-9]+$/.test(s);

describe("presence", () => {
  test("each device lists its user's devices; a pull device joins; a killed device leaves exactly once", async () => {
    const [eid] = names("alice");
    const alice = await account(eid, ["phone", "laptop", "tablet"]);
    const phone = await device(alice, "phone");
    const laptop = await device(alice, "laptop");
    await until(() => synced([phone, laptop], ["laptop", "phone"]), "both devices to list both", phone, laptop);

    const tablet = await device(alice, "tablet", { payload: { mode: "pull" }, socketOpts: KILLABLE });
    const all = [phone, laptop, tablet];
    await until(() => synced(all, ["laptop", "phone", "tablet"]), "every device to list all three", ...all);
    // Every screen has the same devices, one meta each, with each device's delivery mode.
    for (const dev of all) {
      const metas = metasBy(dev);
      const context = `${dev.name}: ${JSON.stringify(metas)}\n${transcripts(...all)}`;
      for (const [key, mode] of [["phone", PUSH], ["laptop", PUSH], ["tablet", PULL]]) {
        assert.equal(metas[key].length, 1, context);
        assertMeta(metas[key][0], { signal_request: mode }, context);
      }
      assert.equal(dev.presence.leaves.length, 0, context);
    }

    kill(tablet.socket);
    await until(() => synced([phone, laptop], ["laptop", "phone"]), "the others to drop the tablet", phone, laptop);
    // A second leave (the socket's own untrack and then a sweep, say) would have arrived by now.
    await sleep(QUIET_MS);
    const context = transcripts(phone, laptop);
    for (const dev of [phone, laptop]) {
      assert.deepEqual(dev.presence.leaves, ["tablet"], context);
      assert.equal(wireLeaves(dev.socket, `user:${eid}`, "tablet"), 1, context);
      assert.deepEqual(dev.presence.synced, ["laptop", "phone"], context);
    }
  });

  test("a presence status update changes the device's meta on every screen, and bad ones are refused", async () => {
    const [eid] = names("alice");
    const alice = await account(eid);
    const [phone, laptop] = [await device(alice, "phone"), await device(alice, "laptop")];
    await until(() => synced([phone, laptop], ["laptop", "phone"]), "both devices to list both", phone, laptop);
    const before = metasBy(laptop).phone[0];
    const [joinsBefore, leavesBefore] = [laptop.presence.joins.length, laptop.presence.leaves.length];

    const updated = await push(phone.channel, "presence", { status: "away" });
    assert.equal(updated.status, "ok", transcript(phone.socket));
    const newRef = updated.response.phx_ref;
    assert.deepEqual(updated.response, { phx_ref: newRef }, transcript(phone.socket));
    assert.notEqual(newRef, before.phx_ref);
    await until(() => [phone, laptop].every((d) => metasBy(d).phone?.[0]?.status === "away"), "the update on both screens", phone, laptop);

    for (const bad of [{ status: "" }, { status: 7 }, { status: "x".repeat(65) }, { mood: "away" }, { status: "away", extra: 1 }]) {
      const refused = await push(phone.channel, "presence", bad);
      assert.equal(refused.status, "error", `${JSON.stringify(bad)}\n${transcript(phone.socket)}`);
      assert.equal(typeof refused.response.reason, "string", JSON.stringify(refused.response));
    }
    await sleep(QUIET_MS);
    const context = transcripts(phone, laptop);
    // Phoenix's update shape: the key joins with the new meta and leaves with the old one in
    // one diff, so it stays listed throughout, with one meta that points at the one it replaced.
    for (const dev of [phone, laptop]) {
      assert.deepEqual(dev.presence.synced, ["laptop", "phone"], context);
      assert.deepEqual(metasBy(dev).phone, [{ ...before, status: "away", phx_ref: newRef, phx_ref_prev: before.phx_ref }], context);
    }
    // The refused updates changed nothing: one join and one leave of the phone, nothing else.
    assert.deepEqual(laptop.presence.joins.slice(joinsBefore), ["phone"], context);
    assert.deepEqual(laptop.presence.leaves.slice(leavesBefore), ["phone"], context);
  });

  test("presence:<eid> tells a watcher when a user comes online and goes offline, with last_seen", async () => {
    const [a, b] = names("alice", "bob");
    const [alice, bob] = await Promise.all([account(a), account(b)]);
    /** bob's device watching alice; each `status` is kept with how many devices Presence listed then. */
    const watcher = async (name) => {
      const socket = await connected(suite.server.url, { params: { token: bob.sessions[name], device: name } });
      const channel = socket.channel(`presence:${a}`, {});
      const dev = { name: `bob's ${name} on presence:${a}`, socket, channel, presence: watch(channel), statuses: [] };
      channel.on("status", (s) => dev.statuses.push({ ...s, devices: dev.presence.presence.list().length }));
      dev.joined = await join(channel);
      return dev;
    };
    const offline = (lastSeen) => ({ online: false, last_seen: lastSeen, devices: 0 });

    // Before alice ever connected: offline, never seen.
    const first = await watcher("phone");
    assert.deepEqual(first.joined, { status: "ok", response: { last_seen: null } }, transcript(first.socket));
    await until(() => first.statuses.length === 1, "the first status", first);
    assert.deepEqual(first.statuses, [offline(null)], transcript(first.socket));

    const phone = await device(alice, "phone");
    const laptop = await device(alice, "laptop");
    await until(() => synced([first], ["laptop", "phone"]) && first.statuses.length === 2, "alice online with both devices", first);

    await Promise.all([phone, laptop].map((d) => new Promise((resolve) => d.socket.disconnect(resolve))));
    await until(() => first.statuses.length === 3, "alice offline", first, phone, laptop);
    const lastSeen = first.statuses[2].last_seen;
    assert.equal(typeof lastSeen, "number", transcript(first.socket));
    assert.deepEqual(first.presence.synced, [], transcript(first.socket));

    // A watcher that comes later learns the same from the join reply and its first status.
    const later = await watcher("laptop");
    assert.equal(later.joined.status, "ok", transcript(later.socket));
    const seenAt = later.joined.response.last_seen;
    assert.equal(typeof seenAt, "number", transcript(later.socket));
    await until(() => later.statuses.length === 1 && later.presence.synced, "the later watcher's status", later);
    assert.deepEqual(later.statuses, [offline(seenAt)], transcript(later.socket));
    assert.deepEqual(later.presence.synced, [], transcript(later.socket));

    // phoenix.js rejoins the phone's channel once its socket is back.
    await connect(phone.socket);
    await until(() => first.statuses.length === 4 && later.statuses.length === 2, "alice online again", first, later, phone);
    await sleep(QUIET_MS);
    const context = transcripts(first, later);
    const online = (devices) => ({ online: true, last_seen: null, devices });
    // The diff comes before the status, so a client counting devices agrees with it.
    assert.deepEqual(first.statuses, [offline(null), online(first.statuses[1].devices), offline(lastSeen), online(1)], context);
    assert.ok(first.statuses[1].devices >= 1, context);
    assert.deepEqual(later.statuses, [offline(seenAt), online(1)], context);
    for (const w of [first, later]) assert.deepEqual(w.presence.synced, ["phone"], context);

    // Only signed-in sockets may watch, and only users that exist.
    const anonymous = await connected(suite.server.url);
    for (const [socket, topic, reason, code] of [[anonymous, `presence:${a}`, "unauthorized", "unauthorized"], [first.socket, `presence:nobody-${run}`, "no_such_user", "no_such_user"]]) {
      const channel = socket.channel(topic, {});
      assert.deepEqual(await join(channel), { status: "error", response: { reason, code } }, transcript(socket));
      await reply(channel.leave()); // phoenix.js would otherwise retry the join
    }
  });

  test("room presence: members by user name or anonymous:<connection id>; a leave and a kill are seen once each", async () => {
    const [a, b] = names("alice", "bob");
    const [alice, bob] = await Promise.all([account(a, ["phone"]), account(b, ["laptop"])]);
    const room = `room:lobby-${run}`;
    const members = [
      await open(room, { params: { token: alice.sessions.phone, device: "phone" } }),
      await open(room, { params: { token: bob.sessions.laptop, device: "laptop" } }),
      await open(room, { socketOpts: KILLABLE }),
    ];
    const [am, bm, anon] = members;
    const converged = () => members.every((m) => m.presence.synced?.length === 3) && synced(members, anon.presence.synced);
    await until(converged, "the lists to converge", ...members);
    const anonKey = anon.presence.synced.find((k) => k.startsWith("anonymous:"));
    // A connection id names the node, its incarnation and the socket: <node>/<hex>/<n>.
    assert.match(anonKey ?? "", /^anonymous:[^/\s]+\/[0-9a-f]{8}\/\d+$/, transcripts(...members));
    assert.deepEqual(anon.presence.synced, [a, anonKey, b].sort(), transcripts(...members));
    for (const m of members) {
      const metas = metasBy(m);
      const context = `${m.name}: ${JSON.stringify(metas)}`;
      assertMeta(metas[a][0], { device: "phone" }, context);
      assertMeta(metas[b][0], { device: "laptop" }, context);
      assertMeta(metas[anonKey][0], {}, context);
    }

    assert.equal((await reply(bm.channel.leave())).status, "ok", transcript(bm.socket));
    await until(() => synced([am, anon], [a, anonKey].sort()), "bob's leave", am, anon);
    kill(anon.socket);
    await until(() => synced([am], [a]), "the anonymous member's death", am);
    await sleep(QUIET_MS);
    assert.deepEqual(am.presence.leaves, [b, anonKey], transcript(am.socket));
    assert.equal(wireLeaves(am.socket, room, anonKey), 1, transcript(am.socket));
    assert.equal(wireLeaves(am.socket, room, b), 1, transcript(am.socket));
  });
});

describe("status signals", () => {
  /** alice and bob with a phone and a laptop each on their own `user:` topic. */
  async function pair() {
    const [a, b] = names("alice", "bob");
    const [alice, bob] = await Promise.all([account(a), account(b)]);
    const devs = await Promise.all([device(alice, "phone"), device(alice, "laptop"), device(bob, "phone"), device(bob, "laptop")]);
    return { alice, bob, devs };
  }
  const withId = (dev, id) => dev.signals.filter((s) => s.id === id);

  test("TYPING reaches the receiver's devices and the sender's other device, and expires into PAUSED", async () => {
    const { bob, devs } = await pair();
    const [alicePhone, aliceLaptop, bobPhone, bobLaptop] = devs;

    const sent = await push(alicePhone.channel, "signal", { id: "typing-1", to: { eid: bob.eid }, status: TYPING });
    assert.equal(sent.status, "ok", transcript(alicePhone.socket));
    const response = sent.response;
    assert.ok(isDigits(response.timestamp), `timestamp ${JSON.stringify(response.timestamp)} is an int64 string`);
    const from = { eid: alicePhone.eid, connection_resource_id: "phone" };
    const expected = { id: "typing-1", signal_offset: 0, user_offset: 0, status: TYPING, timestamp: response.timestamp, from, to: { eid: bob.eid } };
    const flags = { type: RESPONSE, signal_type: SENDER, signal_offset_state: true };
    assert.deepEqual(response, { ...expected, ...flags }, transcript(alicePhone.socket));

    // Nobody sends PAUSED: the server does, to both of bob's devices and alice's laptop. (It
    // reaches the sending phone too, unlike the relay; that is left unasserted either way.)
    const expired = (dev) => withId(dev, "typing-1").some((s) => s.status === PAUSED);
    await until(() => [bobPhone, bobLaptop, aliceLaptop].every(expired), "the expiry PAUSED", ...devs);
    await sleep(QUIET_MS);
    const context = transcripts(...devs);
    const relayed = (signalType) => ({ ...response, type: REQUEST, signal_type: signalType });
    for (const [dev, signalType] of [[bobPhone, RECEIVER], [bobLaptop, RECEIVER], [aliceLaptop, DEVICE]]) {
      const [typing, paused, ...more] = withId(dev, "typing-1");
      assert.deepEqual(typing, relayed(signalType), context);
      assert.ok(isDigits(paused.timestamp), context);
      assert.deepEqual(paused, { ...relayed(signalType), status: PAUSED, timestamp: paused.timestamp }, context);
      assert.deepEqual(more, [], context);
    }
    // The sending device is not told about its own TYPING (it has the reply).
    assert.deepEqual(withId(alicePhone, "typing-1").filter((s) => s.status === TYPING), [], context);

    // An explicit PAUSED disarms the indicator: no second PAUSED comes by itself.
    for (const status of [TYPING, PAUSED]) {
      const r = await push(alicePhone.channel, "signal", { id: "typing-2", to: { eid: bob.eid }, status });
      assert.equal(r.status, "ok", transcript(alicePhone.socket));
    }
    await until(() => [bobPhone, bobLaptop].every((d) => withId(d, "typing-2").length === 2), "TYPING and PAUSED", bobPhone, bobLaptop);
    // A bounded wait past the timeout, for an expiry that must not come.
    await sleep(TYPING_TIMEOUT_MS + 2 * QUIET_MS);
    const settled = transcripts(...devs);
    for (const dev of [bobPhone, bobLaptop, aliceLaptop]) {
      assert.deepEqual(withId(dev, "typing-2").map((s) => s.status), [TYPING, PAUSED], settled);
    }
    assert.deepEqual(withId(alicePhone, "typing-2"), [], settled);

    // Signals are never stored: no message events, and nothing in either log.
    for (const dev of devs) {
      assert.deepEqual(dev.messages, [], settled);
      assert.deepEqual(await push(dev.channel, "pull", { after: 0 }), { status: "ok", response: { messages: [], last_offset: 0, more: false } }, settled);
    }
  });

  test("signals are rate limited per pair with 429, and bad ones get 400 or 404", async () => {
    const { bob, devs } = await pair();
    const [alicePhone, , bobPhone] = devs;
    const cases = [
      ["an unknown status", { id: "bad-1", to: { eid: bob.eid }, status: 9 }, 400, "invalid_input"],
      ["no to", { id: "bad-2", status: TYPING }, 400, "invalid_input"],
      ["to yourself", { id: "bad-3", to: { eid: alicePhone.eid }, status: TYPING }, 400, "invalid_input"],
      ["a forged from", { id: "bad-4", to: { eid: bob.eid }, from: { eid: bob.eid }, status: TYPING }, 403, "source_mismatch"],
      ["an unknown receiver", { id: "bad-5", to: { eid: `nobody-${run}` }, status: TYPING }, 404, "unknown_recipient"],
    ];
    for (const [what, signal, statusCode, code] of cases) {
      const refused = await push(alicePhone.channel, "signal", signal);
      assert.equal(refused.status, "error", `${what}\n${transcript(alicePhone.socket)}`);
      assert.equal(typeof refused.response.reason, "string", what);
      assert.deepEqual(refused.response, { reason: refused.response.reason, code, status_code: statusCode }, what);
    }

    // Sent back to back (one write each, in one tick): the first 10 are the burst, and at 5/s
    // the 10 after it could only all pass if the server took 2 s to read them.
    const burst = (i) => ({ id: `burst-${i}`, to: { eid: bob.eid }, status: CHATTING });
    const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => push(alicePhone.channel, "signal", burst(i))));
    const context = transcript(alicePhone.socket);
    replies.slice(0, 10).forEach((r) => assert.equal(r.status, "ok", context));
    const limited = replies.filter((r) => r.status !== "ok");
    assert.ok(limited.length > 0, `some of the 20 should be rate limited\n${context}`);
    for (const { status, response } of limited) {
      assert.equal(status, "error", context);
      assert.match(response.reason, /^rate limited: /, context);
      assert.deepEqual(response, { reason: response.reason, code: "rate_limited", status_code: 429 }, context);
    }

    // Exactly the accepted signals reached bob, in order; none of the refused ones.
    const accepted = replies.map((r, i) => r.status === "ok" && `burst-${i}`).filter(Boolean);
    await until(() => bobPhone.signals.length >= accepted.length, "bob's phone to get the accepted signals", bobPhone);
    await sleep(QUIET_MS);
    assert.deepEqual(bobPhone.signals.map((s) => s.id), accepted, transcript(bobPhone.socket));
  });
});

describe("read receipts", () => {
  test("a read receipt reaches the other three devices, and all four screens agree on the read state", async () => {
    const [a, b] = names("alice", "bob");
    const [alice, bob] = await Promise.all([account(a), account(b)]);
    const devs = await Promise.all([device(alice, "phone"), device(alice, "laptop"), device(bob, "phone"), device(bob, "laptop")]);
    const [alicePhone, aliceLaptop, bobPhone, bobLaptop] = devs;
    const ids = ["read-1", "read-2"];
    for (const id of ids) {
      const sent = await push(alicePhone.channel, "message", { id, to: { eid: b }, payload: Buffer.from(id).toString("base64") });
      assert.equal(sent.status, "ok", transcript(alicePhone.socket));
    }
    await until(() => bobPhone.messages.length === 2, "bob's phone to get both messages", bobPhone);

    const read = await push(bobPhone.channel, "receipt", { up_to: 2, state: "read" });
    assert.deepEqual(read, { status: "ok", response: { acked_offset: 2 } }, transcript(bobPhone.socket));
    const others = [alicePhone, aliceLaptop, bobLaptop];
    await until(() => others.every((d) => d.receipts.length), "the receipt on the other three devices", ...devs);
    await sleep(QUIET_MS);
    const context = transcripts(...devs);

    // The same receipt on each: bob (from his phone) read alice's messages up to the second.
    const receipt = alicePhone.receipts[0];
    assert.ok(isDigits(receipt.timestamp), context);
    const peer = { from: a, to: b, offset: "2", peer_offset: "2" };
    const from = { eid: b, connection_resource_id: "phone" };
    const expected = { to: { eid: a }, from, message_id: "read-2", method: READ, timestamp: receipt.timestamp, status_code: 200, peer };
    assert.deepEqual(receipt, expected, context);
    for (const dev of others) assert.deepEqual(dev.receipts, [receipt], context);
    assert.deepEqual(bobPhone.receipts, [], context);

    // What each screen would show after a reload: both messages read, on both sides.
    for (const dev of devs) {
      const history = await push(dev.channel, "history", { with: dev.eid === a ? b : a });
      assert.equal(history.status, "ok", transcript(dev.socket));
      const state = history.response.messages.map((m) => [m.id, m.signal_ack_state]);
      const readState = { send: true, received: true, read: true };
      assert.deepEqual(state, [["read-2", readState], ["read-1", readState]], `${dev.eid}/${dev.device}\n${context}`);
    }
  });
});
