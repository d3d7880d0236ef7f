// Courier's chat page: accounts over /api, everything else over one Phoenix socket.
//
// One `user:<me>` inbox carries messages, receipts, typing signals and invites; one
// `presence:<peer>` channel per person in the list tells whether they are online. Messages
// are kept per conversation by user_offset (the conversation's own sequence), so what the
// inbox pushes, what `history` returns and what our own sends were acked with all land in one
// place whatever order they arrive in.
import { $, el } from "./dom.js";
import { Inbox, PushError, Socket } from "./phoenix_client.js";

const SESSION_KEY = "courier.session";
const DEVICE_KEY = "courier.device";
const seenKey = (eid) => `courier.seen.${eid}`;
const openKey = (eid) => `courier.open.${eid}`;
const sentInvitesKey = (eid) => `courier.sent-invites.${eid}`;

const HISTORY_PAGE = 30;
// Seed 004 signal statuses.
const RECORDING = 2;
const TYPING = 4;
const PAUSED = 5;
const CANCELLED = 6;
// A TYPING is re-sent this often while the person keeps typing, well inside the server's
// 10 s expiry, and ended after this much quiet.
const TYPING_REFRESH_MS = 4_000;
const TYPING_IDLE_MS = 3_000;
// If an end of typing is lost (the other side dropped), the indicator still goes away.
const TYPING_SHOW_MS = 12_000;
const RECEIPT_DEBOUNCE_MS = 150;
const RETRY_BUSY_MS = 2_000;
// Closes in a row without an open in between: the drop itself, then attempts that failed. A
// browser hides why a handshake failed, so by then the token may as well be the reason.
const FAILED_CONNECTS_BEFORE_HINT = 4;
// MessagePeerAckSignal.method
const DELIVERED = 2;
const READ = 3;


// ---- storage -------------------------------------------------------------------------------

function readJson(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

function randomHex(bytes) {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** One device name per browser profile, so its tabs share a cursor instead of piling up devices. */
function deviceId() {
  let id = localStorage.getItem(DEVICE_KEY);
  if (!id) {
    id = `web-${randomHex(6)}`;
    localStorage.setItem(DEVICE_KEY, id);
  }
  return id;
}

// ---- text ----------------------------------------------------------------------------------

function encodeText(text) {
  let binary = "";
  for (const b of new TextEncoder().encode(text)) binary += String.fromCharCode(b);
  return btoa(binary);
}

function decodeText(message) {
  if (message.encryption_type || message.encrypted) return { text: "(encrypted message)", special: true };
  try {
    const binary = atob(message.payload ?? "");
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    return { text: new TextDecoder("utf-8", { fatal: true }).decode(bytes), special: false };
  } catch {
    return { text: "(a message this page cannot show)", special: true };
  }
}

const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayAndClock = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

function shortTime(ms) {
  const date = new Date(ms);
  return new Date().toDateString() === date.toDateString() ? clock.format(date) : dayAndClock.format(date);
}

function lastSeenText(ms) {
  const ago = Date.now() - ms;
  if (ago < 60_000) return "last seen just now";
  if (ago < 3_600_000) return `last seen ${Math.floor(ago / 60_000)} min ago`;
  return `last seen ${shortTime(ms)}`;
}

function presenceText(peer) {
  if (!peer.presence) return "";
  if (peer.presence.online) return "online";
  return peer.presence.last_seen ? lastSeenText(peer.presence.last_seen) : "offline";
}

/** What the server's error replies and bodies say, in words for a person. */
function describeError(body) {
  const messages = {
    wrong_password: "Wrong password.",
    no_such_user: "There is no user by that name.",
    user_in_use: "That username is taken.",
    mixed_script_username: "A username may use letters of one script only.",
    rate_limited: "Too many attempts; wait a little and try again.",
    busy: "The server is busy; try again in a moment.",
    already_contacts: "You are contacts already.",
    no_such_invite: "That invite is no longer waiting.",
    unknown_recipient: "There is no user by that name.",
    not_contacts: "You can write only to your contacts.",
  };
  return messages[body?.error ?? body?.code] ?? body?.reason ?? "Something went wrong.";
}

// ---- state ---------------------------------------------------------------------------------

/** One person this user talks to (a contact, or anyone who wrote). */
class Peer {
  constructor(eid) {
    this.eid = eid;
    this.contact = false;
    this.presence = null;
    this.presenceChannel = null;
    this.byId = new Map();
    this.loaded = false;
    this.loading = false;
    this.more = false;
    // How far the other side has acknowledged our messages, in user_offsets.
    this.deliveredUpTo = 0;
    this.readUpTo = 0;
    // signal_offsets of their messages we have not read yet.
    this.unread = new Set();
    this.typing = false;
    this.typingTimer = null;
  }

  /** Messages oldest first: stored ones by user_offset, then those still on their way. */
  sorted() {
    return [...this.byId.values()].sort((a, b) => {
      if (a.userOffset && b.userOffset) return a.userOffset - b.userOffset;
      if (a.userOffset) return -1;
      if (b.userOffset) return 1;
      return a.queuedAt - b.queuedAt;
    });
  }

  oldestOffset() {
    let oldest = Infinity;
    for (const m of this.byId.values()) if (m.userOffset) oldest = Math.min(oldest, m.userOffset);
    return oldest === Infinity ? null : oldest;
  }

  /** ✓ sent, ✓✓ delivered, read: the message's own state or what a receipt said since. */
  stateOf(m) {
    if (!m.mine) return null;
    if (m.userOffset) {
      if (m.userOffset <= this.readUpTo) return "read";
      if (m.userOffset <= this.deliveredUpTo) return "delivered";
    }
    return m.state;
  }
}

const RANK = { failed: -1, pending: 0, sent: 1, delivered: 2, read: 3 };

/** Everything the page holds for a signed-in user, as it is before anyone signs in. */
function signedOut() {
  return {
    me: null,
    token: null,
    socket: null,
    inbox: null,
    peers: new Map(),
    invites: new Map(),
    sentInvites: new Set(),
    open: null,
    failedConnects: 0,
    receivedSent: 0,
    readSent: 0,
    // Offsets read on screen but not yet acknowledged as read: the server keeps one read mark per
    // log, so a read receipt may only cover offsets below the first message still unread anywhere.
    readPending: new Set(),
    receiptTimer: null,
    typingSentAt: 0,
    typingTo: null,
    typingIdle: null,
    tabs: null,
    joinedOnce: false,
    listeners: [],
  };
}

const app = signedOut();

function peer(eid) {
  let p = app.peers.get(eid);
  if (!p) {
    p = new Peer(eid);
    app.peers.set(eid, p);
    if (app.socket) watchPresence(p);
  }
  return p;
}

// ---- session -------------------------------------------------------------------------------

async function postJson(path, body, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(path, { method: "POST", headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let json = null;
  try {
    json = await res.json();
  } catch {
    json = null;
  }
  return { status: res.status, body: json };
}

async function authenticate(action, username, password) {
  const error = $("auth-error");
  error.textContent = "";
  if (!username.trim()) {
    error.textContent = "Enter a username.";
    $("auth-username").focus();
    return;
  }
  if (action === "signup" && password.length < 8) {
    error.textContent = "A new password needs at least 8 characters.";
    $("auth-password").focus();
    return;
  }
  const buttons = $("auth-form").querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  try {
    const res = await postJson(`/api/${action}`, { username: username.trim(), password });
    if (res.status === 200 || res.status === 201) {
      const session = { token: res.body.session, username: res.body.username };
      localStorage.setItem(SESSION_KEY, JSON.stringify(session));
      $("auth-password").value = "";
      start(session);
    } else {
      error.textContent = describeError(res.body);
    }
  } catch {
    error.textContent = "The server cannot be reached.";
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

async function signOut() {
  const token = app.token;
  stop();
  localStorage.removeItem(SESSION_KEY);
  showAuth("");
  if (token) {
    // Ends the session on the server too, which closes this user's other tabs on it.
    await postJson("/api/signout", undefined, token).catch(() => {});
  }
}

/** Forgets a session the server no longer takes (signed out elsewhere, revoked, expired). */
// A refused handshake and a server that is down look the same to a page; the session route
// tells them apart. Asked once per run of failures, and only the token still in use counts.
async function checkSession(token) {
  if (app.failedConnects !== 1) return;
  let res;
  try {
    res = await fetch("/api/session", { headers: { authorization: `Bearer ${token}` } });
  } catch {
    return; // unreachable: the session may well be fine
  }
  if (res.status === 401 && app.token === token) sessionEnded("Your session has ended; sign in again.");
}

function sessionEnded(why) {
  stop();
  localStorage.removeItem(SESSION_KEY);
  showAuth(why);
}

function showAuth(message) {
  $("auth").hidden = false;
  $("chat").hidden = true;
  $("account").hidden = true;
  $("auth-error").textContent = message;
  setConnection("closed", "Not connected");
  $("auth-username").focus();
}

function stop() {
  for (const off of app.listeners) off();
  app.socket?.disconnect();
  app.tabs?.close();
  for (const p of app.peers.values()) clearTimeout(p.typingTimer);
  clearTimeout(app.receiptTimer);
  clearTimeout(app.typingIdle);
  Object.assign(app, signedOut());
  $("messages").replaceChildren();
  $("notices").replaceChildren();
  $("contacts").replaceChildren();
  $("invites").replaceChildren();
  $("sent-invites").replaceChildren();
  $("conversation").hidden = true;
  $("empty").hidden = false;
  $("chat").classList.remove("open");
}

function setConnection(state, text, action) {
  const node = $("connection");
  node.dataset.state = state;
  node.replaceChildren(text);
  if (action) node.append(" ", action);
}

function start(session) {
  stop();
  app.me = session.username;
  app.token = session.token;
  app.sentInvites = new Set(readJson(sentInvitesKey(app.me), []));
  $("me").textContent = app.me;
  $("auth").hidden = true;
  $("chat").hidden = false;
  $("account").hidden = false;

  const socket = new Socket("/socket", { authToken: session.token, params: { device: deviceId() } });
  app.socket = socket;
  const stored = Number(localStorage.getItem(seenKey(app.me)) ?? 0);
  const inbox = new Inbox(socket, app.me, {
    initialOffset: Number.isSafeInteger(stored) && stored > 0 ? stored : 0,
    onOffset: (offset) => {
      // Tabs of one browser share the mark; none may move it back.
      const key = seenKey(app.me);
      if (offset === 0 || offset > Number(localStorage.getItem(key) ?? 0)) localStorage.setItem(key, String(offset));
    },
  });
  app.inbox = inbox;

  app.listeners.push(
    socket.on("open", () => {
      app.failedConnects = 0;
      setConnection("open", "Connected");
    }),
    socket.on("close", ({ reason }) => {
      if (/session (ended|expired|revoked)/.test(reason ?? "")) {
        sessionEnded("Your session has ended; sign in again.");
        return;
      }
      for (const p of app.peers.values()) setTyping(p, false);
      app.failedConnects += 1;
      checkSession(session.token);
      if (app.failedConnects >= FAILED_CONNECTS_BEFORE_HINT) {
        const again = el("button", { type: "button", className: "secondary", textContent: "Sign in again" });
        again.addEventListener("click", () => sessionEnded(""));
        setConnection("connecting", "Cannot connect: the server may be down, or this session has ended.", again);
      } else {
        setConnection("connecting", "Reconnecting…");
      }
    }),
    inbox.on("join", onJoined),
    inbox.on("join_error", (reply) => setConnection("connecting", `Inbox unavailable: ${describeError(reply)}`)),
    inbox.on("message", onMessage),
    inbox.on("receipt", onReceipt),
    inbox.on("signal", onSignal),
    inbox.on("invite.request", ({ source }) => {
      if (source) app.invites.set(source, Date.now());
      renderInvites();
    }),
    inbox.on("invite.accept", ({ source }) => {
      forgetSentInvite(source);
      refreshContacts();
    }),
    inbox.on("broadcast", notice),
    inbox.on("invite.reject", ({ source }) => {
      forgetSentInvite(source);
      $("invite-status").textContent = `${source} declined your invite.`;
    }),
  );

  // Invites accepted or declined in another tab of this browser; the server tells only the
  // other person, not this user's other devices.
  app.tabs = "BroadcastChannel" in window ? new BroadcastChannel(`courier:${app.me}`) : null;
  if (app.tabs) {
    app.tabs.onmessage = ({ data }) => {
      if (data?.type === "invite-answered") {
        app.invites.delete(data.from);
        renderInvites();
        refreshContacts();
      } else if (data?.type === "invite-sent") {
        app.sentInvites.add(data.to);
        renderInvites();
      }
    };
  }

  setConnection("connecting", "Connecting…");
  socket.connect();
  inbox.join().catch(() => {});
  renderInvites();
  renderContacts();
}

// ---- inbox ---------------------------------------------------------------------------------

function onJoined(reply) {
  const rejoin = app.joinedOnce;
  app.joinedOnce = true;
  // Clears an "Inbox unavailable" left by a refused join before this one.
  if (app.socket?.isConnected()) setConnection("open", "Connected");
  app.invites = new Map((reply.invites ?? []).map((i) => [i.from, i.at]));
  renderInvites();
  refreshContacts();
  // Sends that had no answer before the drop: the same ids again, which the server stores once.
  for (const p of app.peers.values()) for (const m of p.byId.values()) if (m.mine && m.state === "pending" && !m.inFlight) deliver(p, m);
  if (!rejoin) {
    const last = localStorage.getItem(openKey(app.me));
    if (last && last !== app.me) openConversation(last, { focus: false });
  } else if (app.open) {
    // Receipts that went out while this tab was away are not replayed; the newest page of
    // history carries every message's state as it is now.
    loadHistory(peer(app.open), { newest: true });
  }
}

async function refreshContacts() {
  if (!app.inbox) return;
  try {
    const reply = await app.inbox.push("contacts", {});
    if (reply.status !== "ok") return;
    for (const eid of reply.response.contacts ?? []) {
      const p = peer(eid);
      p.contact = true;
      // A contact refused earlier (not_contacts) may be watched now.
      watchPresence(p);
      forgetSentInvite(eid);
    }
    renderContacts();
  } catch {
    // The next join asks again.
  }
}

function wireMessage(m) {
  const mine = m.from?.eid === app.me;
  const { text, special } = decodeText(m);
  const ack = m.signal_ack_state ?? {};
  return {
    id: m.id,
    mine,
    text,
    special,
    userOffset: m.user_offset || null,
    signalOffset: m.signal_offset || 0,
    timestamp: Number(m.timestamp) || Date.now(),
    queuedAt: 0,
    state: mine ? (ack.read ? "read" : ack.received ? "delivered" : "sent") : null,
    read: !mine && Boolean(ack.read),
  };
}

/** Adds or updates a message of `p`'s conversation; returns whether it was new. */
function merge(p, incoming) {
  const known = p.byId.get(incoming.id);
  if (!known) {
    p.byId.set(incoming.id, incoming);
    return true;
  }
  known.userOffset ||= incoming.userOffset;
  known.signalOffset ||= incoming.signalOffset;
  if (known.mine && RANK[incoming.state] > RANK[known.state]) known.state = incoming.state;
  if (!known.mine) known.read ||= incoming.read;
  return false;
}

function onMessage(m) {
  const mine = m.from?.eid === app.me;
  const eid = mine ? m.to?.eid : m.from?.eid;
  // A sealed message names no sender, so it belongs to no conversation this page shows.
  if (!eid) return;
  const p = peer(eid);
  const message = wireMessage(m);
  const added = merge(p, message);
  if (!mine) {
    if (!message.read && message.signalOffset) p.unread.add(message.signalOffset);
    setTyping(p, false);
    // Old, already read messages (a new device catching up on its log) are not news.
    if (added && !message.read) announce(`${eid}: ${message.text}`);
  }
  scheduleReceipts();
  renderContacts();
  if (app.open === eid) renderMessages({ follow: true });
}

function onReceipt(r) {
  const sender = r.peer?.from;
  const receiver = r.peer?.to;
  const offset = Number(r.peer?.offset ?? 0);
  const acked = Math.max(offset, Number(r.peer?.peer_offset ?? 0));
  if (sender === app.me && receiver) {
    const p = peer(receiver);
    p.deliveredUpTo = Math.max(p.deliveredUpTo, acked);
    if (r.method === READ) p.readUpTo = Math.max(p.readUpTo, offset);
    if (app.open === receiver) renderMessages();
  } else if (receiver === app.me && sender && r.method === READ) {
    // Another device of ours read them: no badge here either.
    const p = peer(sender);
    for (const m of p.byId.values()) {
      if (!m.mine && m.userOffset && m.userOffset <= offset) {
        m.read = true;
        p.unread.delete(m.signalOffset);
      }
    }
    renderContacts();
  } else if (r.method !== DELIVERED && r.method !== READ) {
    return;
  }
}

function onSignal(s) {
  const from = s.from?.eid;
  if (!from || from === app.me) return;
  if (s.status === TYPING || s.status === RECORDING) setTyping(peer(from), true);
  else if (s.status === PAUSED || s.status === CANCELLED) setTyping(peer(from), false);
}

function setTyping(p, typing) {
  clearTimeout(p.typingTimer);
  p.typingTimer = typing ? setTimeout(() => setTyping(p, false), TYPING_SHOW_MS) : null;
  if (p.typing === typing) return;
  p.typing = typing;
  renderContacts();
  if (app.open === p.eid) renderTyping();
}

// ---- receipts ------------------------------------------------------------------------------

function scheduleReceipts() {
  clearTimeout(app.receiptTimer);
  app.receiptTimer = setTimeout(sendReceipts, RECEIPT_DEBOUNCE_MS);
}

function markOpenConversationRead() {
  if (!app.open || document.visibilityState !== "visible") return false;
  const p = peer(app.open);
  let moved = false;
  for (const m of p.byId.values()) {
    if (!m.mine && !m.read) {
      m.read = true;
      moved = true;
    }
  }
  for (const offset of p.unread) app.readPending.add(offset);
  p.unread.clear();
  if (moved) renderContacts();
  return moved;
}

async function sendReceipts() {
  const inbox = app.inbox;
  if (!inbox) return;
  markOpenConversationRead();
  let firstUnread = Infinity;
  for (const p of app.peers.values()) for (const offset of p.unread) firstUnread = Math.min(firstUnread, offset);
  let readUpTo = 0;
  for (const offset of app.readPending) if (offset < firstUnread) readUpTo = Math.max(readUpTo, offset);
  try {
    if (readUpTo > app.readSent) {
      const before = app.readSent;
      app.readSent = readUpTo;
      try {
        await inbox.receipt(readUpTo, "read");
        for (const offset of [...app.readPending]) if (offset <= readUpTo) app.readPending.delete(offset);
      } catch (err) {
        app.readSent = before;
        throw err;
      }
    }
    const upTo = inbox.lastSeen;
    if (upTo > app.receivedSent && upTo > app.readSent) {
      app.receivedSent = upTo;
      await inbox.receipt(upTo, "received").catch((err) => {
        app.receivedSent = 0;
        throw err;
      });
    }
  } catch {
    // Offline or refused: the next message or join tries again.
  }
}

// ---- sending -------------------------------------------------------------------------------

function newMessageId() {
  return `web-${Date.now().toString(36)}-${randomHex(6)}`;
}

function sendMessage(text) {
  const p = peer(app.open);
  const m = { id: newMessageId(), mine: true, text, special: false, userOffset: null, signalOffset: 0, timestamp: Date.now(), queuedAt: performance.now(), state: "pending" };
  p.byId.set(m.id, m);
  renderMessages({ follow: true, force: true });
  deliver(p, m);
}

async function deliver(p, m) {
  const inbox = app.inbox;
  if (!inbox) return;
  m.inFlight = true;
  m.state = "pending";
  renderIfOpen(p);
  try {
    const reply = await inbox.push("message", { id: m.id, to: { eid: p.eid }, payload: encodeText(m.text) });
    if (reply.status === "ok") {
      const ack = reply.response;
      m.userOffset = Number(ack.peer?.offset) || m.userOffset;
      m.timestamp = Number(ack.timestamp) || m.timestamp;
      if (RANK[m.state] < RANK.sent) m.state = "sent";
      p.deliveredUpTo = Math.max(p.deliveredUpTo, Number(ack.peer?.peer_offset ?? 0));
    } else if (reply.response?.status_code === 503) {
      setTimeout(() => m.state === "pending" && deliver(p, m), RETRY_BUSY_MS);
    } else {
      m.state = "failed";
      m.error = describeError(reply.response);
    }
  } catch (err) {
    // No answer: it may or may not be stored. It stays pending and goes again, under the same
    // id, when the inbox is joined again.
    if (!(err instanceof PushError)) throw err;
    if (err.kind === "timeout" && app.inbox?.channel.state === "joined") setTimeout(() => deliver(p, m), RETRY_BUSY_MS);
  } finally {
    m.inFlight = false;
    renderIfOpen(p);
  }
}

function renderIfOpen(p) {
  if (app.open === p.eid) renderMessages();
}

function typingSignal(to, status) {
  app.inbox?.push("signal", { to: { eid: to }, status }).catch(() => {});
}

function composing() {
  if (!app.open) return;
  const text = $("compose").value;
  clearTimeout(app.typingIdle);
  if (!text.trim()) {
    stopTyping();
    return;
  }
  const now = Date.now();
  if (app.typingTo !== app.open || now - app.typingSentAt > TYPING_REFRESH_MS) {
    if (app.typingTo && app.typingTo !== app.open) stopTyping();
    app.typingTo = app.open;
    app.typingSentAt = now;
    typingSignal(app.open, TYPING);
  }
  app.typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(app.typingIdle);
  if (!app.typingTo) return;
  typingSignal(app.typingTo, PAUSED);
  app.typingTo = null;
  app.typingSentAt = 0;
}

// ---- invites and presence ------------------------------------------------------------------

function forgetSentInvite(eid) {
  if (!app.sentInvites.delete(eid)) return;
  localStorage.setItem(sentInvitesKey(app.me), JSON.stringify([...app.sentInvites]));
  renderInvites();
}

async function invite(dest) {
  const status = $("invite-status");
  dest = dest.trim();
  if (!dest) return;
  if (dest === app.me) {
    status.textContent = "That is you.";
    return;
  }
  status.textContent = `Inviting ${dest}…`;
  try {
    const reply = await app.inbox.push("invite.request", { dest });
    if (reply.status === "ok") {
      status.textContent = `Invite sent to ${dest}.`;
      app.sentInvites.add(dest);
      localStorage.setItem(sentInvitesKey(app.me), JSON.stringify([...app.sentInvites]));
      app.tabs?.postMessage({ type: "invite-sent", to: dest });
      $("invite-name").value = "";
      renderInvites();
    } else {
      status.textContent = describeError(reply.response);
    }
  } catch {
    status.textContent = "Not connected; try again in a moment.";
  }
}

async function answerInvite(from, accept) {
  try {
    const reply = await app.inbox.push(accept ? "invite.accept" : "invite.reject", { dest: from });
    if (reply.status !== "ok" && reply.response?.code !== "no_such_invite") {
      $("invite-status").textContent = describeError(reply.response);
      return;
    }
    app.invites.delete(from);
    app.tabs?.postMessage({ type: "invite-answered", from });
    renderInvites();
    if (accept) {
      await refreshContacts();
      $("invite-status").textContent = `${from} is now a contact.`;
    }
  } catch {
    $("invite-status").textContent = "Not connected; try again in a moment.";
  }
}

function watchPresence(p) {
  if (p.presenceChannel || p.eid === app.me) return;
  const channel = app.socket.channel(`presence:${p.eid}`, {});
  p.presenceChannel = channel;
  channel.on("join", (reply) => {
    p.presence = { online: p.presence?.online ?? false, last_seen: reply.last_seen ?? null };
    renderPresence(p);
  });
  channel.on("status", (status) => {
    p.presence = { online: Boolean(status.online), last_seen: status.last_seen ?? null };
    renderPresence(p);
  });
  channel.on("join_error", (reply) => {
    // Refusals that asking again will not change (e.g. not_contacts when the server requires
    // contacts): stop until the person becomes a contact. Anything else is retried.
    if (!["not_contacts", "no_such_user", "unauthorized", "forbidden"].includes(reply?.code)) return;
    channel.leave();
    p.presenceChannel = null;
  });
  channel.join().catch(() => {});
}

// ---- conversations -------------------------------------------------------------------------

async function loadHistory(p, { newest = false } = {}) {
  if (p.loading || !app.inbox) return;
  p.loading = true;
  const oldest = p.oldestOffset();
  const params = { with: p.eid, limit: HISTORY_PAGE };
  if (!newest && oldest) params.before = oldest;
  // Another conversation may be on screen by the time the page arrives.
  const status = (text) => app.open === p.eid && ($("history-status").textContent = text);
  status("Loading messages…");
  try {
    const reply = await app.inbox.push("history", params);
    if (reply.status !== "ok") {
      status(describeError(reply.response));
      return;
    }
    for (const m of reply.response.messages ?? []) {
      const message = wireMessage(m);
      merge(p, message);
      if (!message.mine && !message.read && message.signalOffset) p.unread.add(message.signalOffset);
      if (message.mine && message.state === "read") p.readUpTo = Math.max(p.readUpTo, message.userOffset);
      if (message.mine && message.state !== "sent") p.deliveredUpTo = Math.max(p.deliveredUpTo, message.userOffset);
    }
    if (!newest || !p.loaded) p.more = Boolean(reply.response.more);
    p.loaded = true;
    status(p.byId.size ? "" : "No messages yet.");
  } catch {
    status("Not connected; the messages load once it is back.");
  } finally {
    p.loading = false;
  }
  if (app.open === p.eid) {
    renderMessages({ follow: newest, keepPosition: !newest });
    scheduleReceipts();
  }
  renderContacts();
}

function openConversation(eid, { focus = true } = {}) {
  if (app.typingTo && app.typingTo !== eid) stopTyping();
  app.open = eid;
  localStorage.setItem(openKey(app.me), eid);
  const p = peer(eid);
  $("conversation").hidden = false;
  $("empty").hidden = true;
  $("chat").classList.add("open");
  $("peer-name").textContent = eid;
  $("compose").value = "";
  $("history-status").textContent = "";
  renderPresence(p);
  renderTyping();
  renderMessages({ follow: true, force: true });
  renderContacts();
  loadHistory(p, { newest: true });
  scheduleReceipts();
  if (focus) $("compose").focus();
}

function closeConversation() {
  stopTyping();
  const was = app.open;
  app.open = null;
  localStorage.removeItem(openKey(app.me));
  $("conversation").hidden = true;
  $("empty").hidden = false;
  $("chat").classList.remove("open");
  renderContacts();
  if (was) document.querySelector(`#contacts button[data-peer="${CSS.escape(was)}"]`)?.focus();
}

// ---- rendering -----------------------------------------------------------------------------

/** An operator's broadcast to this user (e.g. from the admin API): shown until dismissed. */
function notice(event, payload) {
  const text = [payload?.text, payload?.message, payload?.body].find((t) => typeof t === "string") ?? JSON.stringify(payload);
  const dismiss = el("button", { type: "button", className: "secondary", textContent: "Dismiss", "aria-label": "Dismiss notice" });
  const item = el("li", { dataset: { event } }, el("span", { className: "text", textContent: text }), dismiss);
  dismiss.addEventListener("click", () => item.remove());
  const list = $("notices");
  list.append(item);
  while (list.childElementCount > 5) list.firstElementChild.remove();
}

function announce(text) {
  const node = $("announcer");
  node.append(el("p", { textContent: text }));
  while (node.childElementCount > 5) node.firstElementChild.remove();
}

function renderInvites() {
  const list = $("invites");
  list.replaceChildren(
    ...[...app.invites.keys()].sort().map((from) => {
      const accept = el("button", { type: "button", textContent: "Accept", "aria-label": `Accept invite from ${from}` });
      const decline = el("button", { type: "button", className: "secondary", textContent: "Decline", "aria-label": `Decline invite from ${from}` });
      accept.addEventListener("click", () => answerInvite(from, true));
      decline.addEventListener("click", () => answerInvite(from, false));
      return el("li", { dataset: { from } }, el("span", { className: "who" }, el("strong", { textContent: from }), " wants to connect"), accept, decline);
    }),
  );
  $("no-invites").hidden = app.invites.size > 0;
  const sent = $("sent-invites");
  sent.replaceChildren(...[...app.sentInvites].sort().map((to) => el("li", { dataset: { to } }, el("span", { className: "who", textContent: to }))));
  $("sent-title").hidden = app.sentInvites.size === 0;
}

function renderContacts() {
  const list = $("contacts");
  const people = [...app.peers.values()].filter((p) => p.contact || p.byId.size > 0).sort((a, b) => a.eid.localeCompare(b.eid));
  const focused = document.activeElement?.closest?.("#contacts button")?.dataset.peer;
  list.replaceChildren(
    ...people.map((p) => {
      const unread = p.unread.size;
      const status = p.typing ? "typing…" : presenceText(p);
      const button = el(
        "button",
        { type: "button", dataset: { peer: p.eid } },
        el("span", { className: "name", textContent: p.eid }),
        el("span", { className: `presence${p.typing ? " typing-hint" : ""}`, dataset: { online: String(Boolean(p.presence?.online)) }, textContent: status }),
        unread ? el("span", { className: "unread", textContent: String(unread), "aria-label": `${unread} unread` }) : null,
      );
      if (!p.contact) button.append(el("span", { className: "visually-hidden", textContent: " (not a contact)" }));
      button.setAttribute("aria-current", String(app.open === p.eid));
      button.addEventListener("click", () => openConversation(p.eid));
      return el("li", {}, button);
    }),
  );
  $("no-contacts").hidden = people.length > 0;
  const unread = people.reduce((n, p) => n + p.unread.size, 0);
  document.title = unread ? `(${unread}) Courier` : "Courier";
  if (focused) list.querySelector(`button[data-peer="${CSS.escape(focused)}"]`)?.focus();
}

function renderPresence(p) {
  renderContacts();
  if (app.open === p.eid) {
    const node = $("peer-presence");
    node.textContent = presenceText(p);
    node.dataset.online = String(Boolean(p.presence?.online));
  }
}

function renderTyping() {
  const p = app.open ? app.peers.get(app.open) : null;
  $("typing").textContent = p?.typing ? `${p.eid} is typing…` : "";
}

const TICKS = {
  pending: ["…", "Sending"],
  sent: ["✓", "Sent"],
  delivered: ["✓✓", "Delivered"],
  read: ["✓✓", "Read"],
  failed: ["Not sent", "Not sent"],
};

function messageItem(p, m, existing) {
  const state = p.stateOf(m);
  const item = existing ?? el("li", { dataset: { id: m.id } });
  item.className = `message ${m.mine ? "mine" : "theirs"}`;
  if (m.userOffset) item.dataset.offset = String(m.userOffset);
  const time = el("time", { dateTime: new Date(m.timestamp).toISOString(), textContent: shortTime(m.timestamp) });
  const meta = el("p", { className: "meta" }, time);
  if (m.mine) {
    const [symbol, label] = TICKS[state] ?? TICKS.sent;
    const ticks = el("span", { className: "ticks", dataset: { state }, role: "img", "aria-label": label, title: m.error ?? label }, el("span", { className: "symbol", textContent: symbol }));
    // Read differs from delivered by more than a colour, for those who cannot tell the colours apart.
    if (state === "read") ticks.append(el("span", { className: "word", textContent: " Read" }));
    meta.append(ticks);
    if (state === "failed") {
      const retry = el("button", { type: "button", className: "secondary", textContent: "Retry" });
      retry.addEventListener("click", () => deliver(p, m));
      meta.append(retry);
    }
  }
  item.replaceChildren(
    el("span", { className: "visually-hidden", textContent: m.mine ? "You said:" : `${p.eid} said:` }),
    el("p", { className: `text${m.special ? " special" : ""}`, textContent: m.text }),
    meta,
  );
  return item;
}

function renderMessages({ follow = false, keepPosition = false, force = false } = {}) {
  if (!app.open) return;
  const p = peer(app.open);
  const list = $("messages");
  const scroller = $("scroller");
  const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  const existing = new Map([...list.children].map((li) => [li.dataset.id, li]));
  if (force) existing.clear();
  const items = p.sorted().map((m) => messageItem(p, m, existing.get(m.id)));
  list.replaceChildren(...items);
  $("older").hidden = !(p.more && p.oldestOffset() > 1);
  if (items.length && !p.loading) $("history-status").textContent = "";
  if (keepPosition) scroller.scrollTop = scroller.scrollHeight - fromBottom;
  else if (force || (follow && nearBottom)) scroller.scrollTop = scroller.scrollHeight;
}

// ---- wiring --------------------------------------------------------------------------------

function wire() {
  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const action = event.submitter?.value === "signup" ? "signup" : "signin";
    authenticate(action, $("auth-username").value, $("auth-password").value);
  });
  $("signout").addEventListener("click", () => signOut());
  $("invite-form").addEventListener("submit", (event) => {
    event.preventDefault();
    invite($("invite-name").value);
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("compose").value;
    if (!text.trim() || !app.open) return;
    $("compose").value = "";
    stopTyping();
    sendMessage(text);
  });
  $("compose").addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter starts a new line, as in most chat apps.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("compose").addEventListener("input", composing);
  $("compose").addEventListener("blur", stopTyping);
  $("older").addEventListener("click", () => app.open && loadHistory(peer(app.open)));
  $("back").addEventListener("click", closeConversation);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && app.open && window.matchMedia("(max-width: 640px)").matches) closeConversation();
  });
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && scheduleReceipts());
  window.addEventListener("storage", (event) => {
    if (event.key !== SESSION_KEY) return;
    // Signed out, or signed in as someone else, in another tab of this browser.
    const session = readJson(SESSION_KEY, null);
    if (!session) sessionEnded("");
    else if (session.token !== app.token) start(session);
  });
  // "last seen 3 min ago" goes stale otherwise.
  setInterval(() => {
    for (const p of app.peers.values()) if (p.presence && !p.presence.online) renderPresence(p);
  }, 30_000);
}

wire();
const saved = readJson(SESSION_KEY, null);
if (saved?.token && saved?.username) start(saved);
else showAuth("");
