// A key user with a phoenix.js device (README "### Key users on Phoenix sockets"): it signs in
// with its ed25519 key over HTTP, joins its user topic, registers prekeys there, and receives a
// sealed message that an anonymous client sent through `/signal/websocket` as a `message` event
// with `encryption_type: "sealed"`, the sealed bytes in `encrypted` and no `from`.
//
// The signal side is encoded with protobufjs from the repository's own proto/signal.proto, so
// the schema is checked by a second protobuf implementation, and signed with Node's ed25519.
import assert from "node:assert/strict";
import { generateKeyPairSync, sign } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, test } from "node:test";

import protobuf from "protobufjs";
import WebSocket from "ws";

import { WAIT_MS, api, connected, disconnectAll, join, push, transcript, waitUntil, withTimeout } from "./support/client.js";
import { serverPerFile } from "./support/suite.js";

const suite = serverPerFile();
afterEach(() => disconnectAll());

const PROTO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../proto/signal.proto");
const root = await protobuf.load(PROTO);
const Envelope = root.lookupType("signal.Message");
const Login = root.lookupType("signal.Login");

/** A fresh key user: its private key, 33-byte userID (0x05 + public key) and eid. */
function keyUser() {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  const raw = Buffer.from(publicKey.export({ format: "jwk" }).x, "base64url");
  const userID = Buffer.concat([Buffer.from([0x05]), raw]);
  // The eid: URL-safe base64 of the userID, without padding.
  return { privateKey, userID, eid: userID.toString("base64url") };
}

/** An anonymous `/signal/websocket` connection that has read its challenge. */
async function anonymous() {
  const ws = new WebSocket(`ws://${suite.server.addr}/signal/websocket`);
  ws.binaryType = "nodebuffer";
  const inbox = [];
  ws.on("message", (data) => inbox.push(Envelope.decode(data)));
  await withTimeout(new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject)), WAIT_MS, "open");
  const first = await waitUntil(() => inbox.shift(), WAIT_MS, "the challenge");
  assert.ok(first.authChallenge?.nonce?.length >= 16, JSON.stringify(first));
  return {
    ws,
    /** Sends `payload` with `sequence`; resolves every answer up to (and with) the first non-preKey. */
    async call(sequence, payload) {
      ws.send(Envelope.encode(Envelope.create({ sequence, ...payload })).finish());
      const answers = [];
      for (;;) {
        const answer = await waitUntil(() => inbox.shift(), WAIT_MS, `the answer to ${sequence}`);
        assert.equal(answer.sequence, sequence, JSON.stringify(answer));
        answers.push(answer);
        if (!answer.preKey) return answers;
      }
    },
  };
}

test("a key user's phoenix.js device signs in with its key and receives sealed messages", async () => {
  const bob = keyUser();

  // Sign in: a challenge for the eid, then the signed Login for device 1.
  const challenge = await api(suite.server, "/api/keys/challenge", { user: bob.eid });
  assert.equal(challenge.status, 200, JSON.stringify(challenge.body));
  const nonce = Buffer.from(challenge.body.nonce, "base64");
  const login = Buffer.from(Login.encode(Login.create({ address: { userID: bob.userID, deviceID: 1 }, nonce })).finish());
  const signature = sign(null, login, bob.privateKey);
  const signin = await api(suite.server, "/api/keys/signin", {
    login: login.toString("base64"),
    signature: signature.toString("base64"),
  });
  assert.equal(signin.status, 200, JSON.stringify(signin.body));
  assert.deepEqual({ ...signin.body, session: "<token>" }, { session: "<token>", username: bob.eid, device: 1 });

  // The session works like any other: a Phoenix device of bob joins his topic with it.
  const socket = await connected(suite.server.url, { params: { token: signin.body.session, device: "browser" } });
  const channel = socket.channel(`user:${bob.eid}`, {});
  const messages = [];
  channel.on("message", (m) => messages.push(m));
  const joined = await join(channel);
  assert.equal(joined.status, "ok", transcript(socket));
  assert.equal(joined.response.last_offset, 0);

  // Its signal device 1 gets keys through the directory events.
  const b64 = (text) => Buffer.from(text).toString("base64");
  const registered = await push(channel, "keys.register", {
    device: 1,
    registration_id: 41,
    signed_pre_key: b64("spk"),
    one_time_pre_keys: [b64("otk-0"), b64("otk-1")],
  });
  assert.deepEqual(registered, { status: "ok", response: { remaining: 2 } }, transcript(socket));

  // An anonymous client fetches the bundle (one preKey, then the ack that ends the list) ...
  const sender = await anonymous();
  const bundle = await sender.call(1, { requestPreKeys: { userID: bob.userID } });
  assert.equal(bundle.length, 2, JSON.stringify(bundle));
  assert.equal(bundle[0].preKey.address.deviceID, 1);
  assert.equal(bundle[0].preKey.registrationID, 41);
  assert.equal(Buffer.from(bundle[0].preKey.oneTimePreKey).toString(), "otk-0");
  assert.ok(bundle[1].ack, JSON.stringify(bundle[1]));
  const count = await push(channel, "keys.count", { device: 1 });
  assert.deepEqual(count.response, { remaining: 1 });

  // ... and sends a sealed message to device 1, acknowledged once stored.
  const sealed = Buffer.from([0, 1, 2, 0xfa, 0xff]);
  const sent = await sender.call(2, { outboundMessage: { to: { userID: bob.userID, deviceID: 1 }, unidentifiedSenderMessage: sealed } });
  assert.ok(sent[0].ack, JSON.stringify(sent[0]));
  sender.ws.close();

  // The browser sees it live, in the same log: sealed, the bytes in base64, and no sender.
  await waitUntil(() => messages.length > 0, WAIT_MS, `the sealed message\n${transcript(socket)}`);
  const [message] = messages;
  assert.equal(message.encryption_type, "sealed", JSON.stringify(message));
  assert.equal(message.encrypted, sealed.toString("base64"));
  assert.equal(message.signal_offset, 1);
  assert.equal(message.to.eid, bob.eid);
  assert.ok(message.from === undefined || message.from === null, `a sealed message names no sender: ${JSON.stringify(message)}`);

  // A pull reads it back from the log the same way.
  const page = await push(channel, "pull", { after: 0 });
  assert.equal(page.status, "ok", transcript(socket));
  assert.deepEqual(
    page.response.messages.map((m) => [m.signal_offset, m.encryption_type, m.encrypted]),
    [[1, "sealed", sealed.toString("base64")]],
  );
});

test("a nonce signs in once, and a login signed by another key is refused", async () => {
  const [bob, mallory] = [keyUser(), keyUser()];
  const { body } = await api(suite.server, "/api/keys/challenge", { user: bob.eid });
  const login = Buffer.from(
    Login.encode(Login.create({ address: { userID: bob.userID, deviceID: 2 }, nonce: Buffer.from(body.nonce, "base64") })).finish(),
  );
  const attempt = (key) =>
    api(suite.server, "/api/keys/signin", { login: login.toString("base64"), signature: sign(null, login, key).toString("base64") });
  const forged = await attempt(mallory.privateKey);
  assert.deepEqual([forged.status, forged.body.error], [401, "invalid_signature"]);
  const real = await attempt(bob.privateKey);
  assert.equal(real.status, 200, JSON.stringify(real.body));
  const replay = await attempt(bob.privateKey);
  assert.deepEqual([replay.status, replay.body.error], [401, "invalid_nonce"]);
});
