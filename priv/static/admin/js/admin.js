// Courier's admin dashboard: a page over the admin API (/admin/api/), nothing else.
//
// The token is pasted once and kept in sessionStorage (or localStorage when asked to remember
// it); every request carries it as a bearer token, and a 401 from any of them forgets it and
// asks again, since a token the server refuses once will not start working later. Stats are
// polled every 2 s and kept for the last minutes to draw the charts; the server keeps no
// history of its own.
import { $, el } from "/js/dom.js";

const TOKEN_KEY = "courier.admin.token";
const POLL_MS = 2_000;
const WINDOW_MS = 5 * 60_000;
const PAGE = 50;
// Wait this long after a disconnect before reading the devices again, so that a device that
// reconnects at once is seen back online rather than caught in between.
const REFRESH_AFTER_ACTION_MS = 700;

const button = (text, label, onClick, className = "") => {
  const node = el("button", { type: "button", textContent: text, className }, null);
  if (label) node.setAttribute("aria-label", label);
  node.addEventListener("click", onClick);
  return node;
};

const state = {
  token: null,
  // Bumped on every sign-in and sign-out, so that answers to an earlier token's requests and
  // its poll loop stop touching the page.
  generation: 0,
  pollTimer: null,
  samples: [],
  topics: { prefix: "", after: null, next: null },
  users: { prefix: "", after: null, next: null },
  selectedUser: null,
  selectedTopic: null,
};

// ---- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const reason = body?.reason ?? (status ? `HTTP ${status}` : "no answer");
    super(reason);
    this.status = status;
    this.code = body?.error ?? null;
    this.reason = reason;
  }

  /** The server's reason, then its code and the status, so an operator can look both up. */
  describe() {
    if (!this.status) return this.reason;
    return this.code ? `${this.reason} (${this.status} ${this.code})` : this.reason;
  }
}

async function api(method, path, body) {
  const token = state.token;
  const generation = state.generation;
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`/admin/api/${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, { reason: "cannot reach the server" });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const err = new ApiError(response.status, data ?? { reason: text.trim() || `HTTP ${response.status}` });
    if (response.status === 401 && generation === state.generation) refused(err);
    throw err;
  }
  return data;
}

const query = (params) => {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== null && value !== undefined && value !== "") search.set(key, value);
  const text = search.toString();
  return text ? `?${text}` : "";
};

// ---- the token -----------------------------------------------------------------------------

function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY) ?? localStorage.getItem(TOKEN_KEY);
}

function forgetStoredToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(TOKEN_KEY);
}

function showLogin(message) {
  state.generation += 1;
  state.token = null;
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
  state.samples = [];
  $("dashboard").hidden = true;
  $("forget").hidden = true;
  $("node").textContent = "";
  $("login").hidden = false;
  $("login-note").textContent = "";
  $("login-error").textContent = message;
  $("token").value = "";
  $("token").focus();
}

/** A 401 from any route: the token is wrong (or was changed on the server), so ask again. */
function refused(err) {
  forgetStoredToken();
  showLogin(`The server refused the token: ${err.describe()}. Paste the admin token again.`);
}

function showDashboard(token) {
  state.generation += 1;
  state.token = token;
  state.samples = [];
  $("login").hidden = true;
  $("login-note").textContent = "";
  $("login-error").textContent = "";
  $("dashboard").hidden = false;
  $("forget").hidden = false;
  clearTimeout(state.pollTimer);
  poll();
  listTopics();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) {
    $("login-error").textContent = "Paste the admin token first.";
    $("token").focus();
    return;
  }
  const remember = $("remember").checked;
  // Checked with a harmless read before it is kept, so a mistyped token is never stored.
  state.generation += 1;
  state.token = token;
  const generation = state.generation;
  $("login-error").textContent = "";
  $("login-note").textContent = "Checking the token…";
  try {
    await api("GET", "stats");
  } catch (err) {
    if (generation !== state.generation) return;
    $("login-note").textContent = "";
    $("login-error").textContent = err.status === 401 ? `The server refused the token: ${err.describe()}.` : `Cannot check the token: ${err.describe()}.`;
    state.token = null;
    return;
  }
  if (generation !== state.generation) return;
  forgetStoredToken();
  (remember ? localStorage : sessionStorage).setItem(TOKEN_KEY, token);
  showDashboard(token);
}

// ---- stats and charts ----------------------------------------------------------------------

function rate(stats, key) {
  const value = stats?.messages?.[key];
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function formatRate(value) {
  if (value === null) return "n/a";
  return value >= 100 ? String(Math.round(value)) : String(Math.round(value * 10) / 10);
}

function formatUptime(secs) {
  const d = Math.floor(secs / 86_400);
  const h = Math.floor((secs % 86_400) / 3_600);
  const m = Math.floor((secs % 3_600) / 60);
  const s = secs % 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}

function renderStats(stats) {
  $("node").textContent = `${stats.node} · v${stats.version}`;
  $("stat-sockets").textContent = String(stats.sockets);
  $("stat-users-online").textContent = String(stats.users_online);
  $("stat-joined").textContent = String(stats.joined_channels);
  $("stat-topics").textContent = String(stats.topics);
  $("stat-stored").textContent = formatRate(rate(stats, "stored_per_sec"));
  $("stat-delivered").textContent = formatRate(rate(stats, "delivered_per_sec"));
  $("stat-uptime").textContent = formatUptime(stats.uptime_secs);
  $("families").replaceChildren(
    ...Object.entries(stats.families ?? {}).map(([family, counts]) =>
      el("li", {}, el("code", { textContent: family }), ` ${counts.topics} topics, ${counts.subscriptions} subscriptions`),
    ),
  );
  if (!Object.keys(stats.families ?? {}).length) $("families").append(el("li", { textContent: "No live topics." }));
}

async function poll() {
  const generation = state.generation;
  state.pollTimer = null;
  const now = Date.now();
  try {
    const stats = await api("GET", "stats");
    if (generation !== state.generation) return;
    renderStats(stats);
    state.samples.push({ at: now, sockets: stats.sockets, stored: rate(stats, "stored_per_sec"), delivered: rate(stats, "delivered_per_sec") });
    $("stats-status").textContent = `Updated every ${POLL_MS / 1000} s; last at ${new Date(now).toLocaleTimeString()}.`;
    $("stats-status").classList.remove("error");
  } catch (err) {
    if (generation !== state.generation) return;
    // A gap in the charts rather than a line drawn across a time nothing was known.
    state.samples.push({ at: now, sockets: null, stored: null, delivered: null });
    $("stats-status").textContent = `Stats unavailable: ${err.describe()}. Trying again.`;
    $("stats-status").classList.add("error");
  }
  while (state.samples.length && state.samples[0].at < now - WINDOW_MS) state.samples.shift();
  drawCharts(now);
  state.pollTimer = setTimeout(poll, POLL_MS);
}

/** A round number a little above `value`, so the axis reads easily and a flat line at the
 * peak does not hide in the chart's top edge. */
function niceCeiling(value) {
  const above = value * 1.05;
  if (above <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(above));
  for (const step of [1, 1.5, 2, 3, 4, 5, 6, 8, 10]) if (step * power >= above) return step * power;
  return 10 * power;
}

const COLOURS = { sockets: "#1f5fbf", stored: "#0b7a3e", delivered: "#b05a00" };

function drawChart(canvas, now, series, { empty } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(200, Math.round(canvas.clientWidth || 480));
  const height = Math.round(canvas.clientHeight || 120);
  if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
    canvas.width = width * ratio;
    canvas.height = height * ratio;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const left = 36;
  const right = width - 6;
  const top = 8;
  const bottom = height - 18;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#5b6470";
  ctx.strokeStyle = "#d8dde3";
  ctx.lineWidth = 1;
  ctx.strokeRect(left + 0.5, top + 0.5, right - left, bottom - top);
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillText(`${WINDOW_MS / 60_000} min ago`, left, bottom + 4);
  ctx.textAlign = "right";
  ctx.fillText("now", right, bottom + 4);
  if (empty) {
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(empty, (left + right) / 2, (top + bottom) / 2);
    return;
  }
  let max = 0;
  for (const { values } of series) for (const v of values) if (v !== null) max = Math.max(max, v);
  const ceiling = niceCeiling(max);
  ctx.textBaseline = "middle";
  ctx.fillText(String(ceiling), left - 4, top);
  ctx.fillText("0", left - 4, bottom);
  const x = (at) => left + ((at - (now - WINDOW_MS)) / WINDOW_MS) * (right - left);
  const y = (v) => bottom - (v / ceiling) * (bottom - top);
  for (const { values, colour } of series) {
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let drawing = false;
    let lone = null;
    state.samples.forEach((sample, i) => {
      const v = values[i];
      if (v === null) {
        drawing = false;
        return;
      }
      if (drawing) {
        ctx.lineTo(x(sample.at), y(v));
        lone = null;
      } else {
        ctx.moveTo(x(sample.at), y(v));
        lone = [x(sample.at), y(v)];
      }
      drawing = true;
    });
    ctx.stroke();
    // A single sample (the first poll) has no line yet; a dot shows it was read.
    if (lone) ctx.fillRect(lone[0] - 2, lone[1] - 2, 4, 4);
  }
}

function describeSeries(name, values, unit = "") {
  const known = values.filter((v) => v !== null);
  if (!known.length) return `${name}: no figures yet`;
  const last = known[known.length - 1];
  const peak = Math.max(...known);
  return `${name}: ${formatRate(last)}${unit} now, peak ${formatRate(peak)}${unit} over the last ${WINDOW_MS / 60_000} minutes`;
}

function drawCharts(now) {
  const sockets = state.samples.map((s) => s.sockets);
  drawChart($("chart-sockets"), now, [{ values: sockets, colour: COLOURS.sockets }]);
  const socketsText = describeSeries("Connections", sockets);
  $("caption-sockets").textContent = socketsText;
  $("chart-sockets").setAttribute("aria-label", socketsText);

  const stored = state.samples.map((s) => s.stored);
  const delivered = state.samples.map((s) => s.delivered);
  // The server reports message rates only from the version that added them; older ones get
  // "n/a" rather than a figure guessed from something else.
  if (stored.every((v) => v === null) && delivered.every((v) => v === null)) {
    const text = "Messages per second: n/a (this server does not report message rates)";
    drawChart($("chart-messages"), now, [], { empty: "n/a" });
    $("caption-messages").textContent = text;
    $("chart-messages").setAttribute("aria-label", text);
    return;
  }
  drawChart($("chart-messages"), now, [
    { values: stored, colour: COLOURS.stored },
    { values: delivered, colour: COLOURS.delivered },
  ]);
  const caption = $("caption-messages");
  caption.replaceChildren(
    el("span", { className: "key", style: `color: ${COLOURS.stored}`, textContent: "■ " }),
    describeSeries("stored", stored, "/s"),
    "; ",
    el("span", { className: "key", style: `color: ${COLOURS.delivered}`, textContent: "■ " }),
    describeSeries("delivered", delivered, "/s"),
  );
  $("chart-messages").setAttribute("aria-label", `Messages per second. ${describeSeries("Stored", stored, "/s")}. ${describeSeries("Delivered", delivered, "/s")}.`);
}

// ---- topics and presence -------------------------------------------------------------------

function say(id, text, { error = false } = {}) {
  const node = $(id);
  node.textContent = text;
  node.classList.toggle("error", error);
}

async function listTopics(after = null) {
  const generation = state.generation;
  const { prefix } = state.topics;
  say("topics-status", "Loading topics…");
  try {
    const page = await api("GET", `topics${query({ prefix, after, limit: PAGE })}`);
    if (generation !== state.generation) return;
    state.topics.after = after;
    state.topics.next = page.next ?? null;
    $("topic-list").replaceChildren(
      ...page.topics.map(({ topic, subscribers }) =>
        el(
          "li",
          { dataset: { topic } },
          el("span", { className: "name" }, el("code", { textContent: topic })),
          el("span", { className: "count", textContent: `${subscribers} ${subscribers === 1 ? "subscriber" : "subscribers"}` }),
          el(
            "span",
            { className: "actions" },
            button("Presence", `Presence of ${topic}`, () => showPresence(topic)),
            button("Broadcast…", `Broadcast to ${topic}`, () => prefillBroadcast(topic), "secondary"),
          ),
        ),
      ),
    );
    $("topics-next").hidden = !state.topics.next;
    $("topics-first").hidden = after === null;
    const where = prefix ? ` starting with ${prefix}` : "";
    say("topics-status", page.topics.length ? `${page.topics.length} live ${page.topics.length === 1 ? "topic" : "topics"}${where}${state.topics.next ? " on this page" : ""}.` : `No live topics${where}.`);
  } catch (err) {
    if (generation === state.generation) say("topics-status", `Cannot list topics: ${err.describe()}`, { error: true });
  }
}

async function showPresence(topic) {
  const generation = state.generation;
  state.selectedTopic = topic;
  say("topics-status", `Loading the presence of ${topic}…`);
  try {
    const presences = await api("GET", `topics/${encodeURIComponent(topic)}/presence`);
    if (generation !== state.generation || state.selectedTopic !== topic) return;
    const entries = Object.entries(presences ?? {});
    $("presence").hidden = false;
    $("presence-title").textContent = `Presence on ${topic}`;
    $("presence-list").replaceChildren(
      ...entries.map(([key, { metas = [] }]) =>
        el(
          "li",
          { dataset: { key } },
          el("strong", { textContent: key }),
          ` ${metas.length} ${metas.length === 1 ? "meta" : "metas"}`,
          ...metas.map((meta) => {
            // The refs are the tracker's bookkeeping, not something an operator acts on.
            const { phx_ref: _ref, phx_ref_prev: _prev, ...shown } = meta;
            return el("pre", { textContent: JSON.stringify(shown) });
          }),
        ),
      ),
    );
    if (!entries.length) $("presence-list").append(el("li", { textContent: "Nobody is present." }));
    say("topics-status", `${entries.length} present on ${topic}.`);
    $("presence-title").focus();
  } catch (err) {
    if (generation === state.generation) say("topics-status", `Cannot read the presence of ${topic}: ${err.describe()}`, { error: true });
  }
}

// ---- users and devices ---------------------------------------------------------------------

async function listUsers(after = null) {
  const generation = state.generation;
  const { prefix } = state.users;
  say("users-status", "Looking up users…");
  try {
    const page = await api("GET", `users${query({ prefix, after, limit: PAGE })}`);
    if (generation !== state.generation) return;
    state.users.after = after;
    state.users.next = page.next ?? null;
    $("user-list").replaceChildren(
      ...page.users.map(({ username, created_at }) =>
        el(
          "li",
          { dataset: { user: username } },
          el("span", { className: "name" }, el("strong", { textContent: username })),
          el("span", { className: "count", textContent: `since ${new Date(created_at).toLocaleDateString()}` }),
          el(
            "span",
            { className: "actions" },
            button("Devices", `Devices of ${username}`, () => showDevices(username)),
            button("Disconnect", `Disconnect ${username}`, () => disconnect(username), "secondary"),
            button("Revoke sessions", `Revoke sessions of ${username}`, () => revoke(username), "secondary danger"),
          ),
        ),
      ),
    );
    $("users-next").hidden = !state.users.next;
    $("users-first").hidden = after === null;
    const where = prefix ? ` starting with ${prefix}` : "";
    say("users-status", page.users.length ? `${page.users.length} ${page.users.length === 1 ? "user" : "users"}${where}${state.users.next ? " on this page" : ""}.` : `No users${where}.`);
  } catch (err) {
    if (generation === state.generation) say("users-status", `Cannot look up users: ${err.describe()}`, { error: true });
  }
}

async function showDevices(username, { focus = true } = {}) {
  const generation = state.generation;
  state.selectedUser = username;
  try {
    const info = await api("GET", `users/${encodeURIComponent(username)}/devices`);
    if (generation !== state.generation || state.selectedUser !== username) return;
    $("devices").hidden = false;
    $("devices").dataset.user = username;
    $("devices-title").textContent = `Devices of ${username}`;
    const online = info.devices.filter((d) => d.online).length;
    $("devices-summary").textContent =
      `${info.devices.length} ${info.devices.length === 1 ? "device" : "devices"}, ${online} online; the log ends at offset ${info.last_offset}.`;
    // A refresh replaces the rows; a keyboard user on one of their buttons stays on it.
    const focused = $("device-list").contains(document.activeElement) ? document.activeElement.getAttribute("aria-label") : null;
    $("device-list").replaceChildren(
      ...info.devices.map((d) => {
        const behind = info.last_offset - d.acked_offset;
        return el(
          "li",
          { dataset: { device: d.device, online: String(d.online) } },
          el("span", { className: "name" }, el("code", { textContent: d.device })),
          el("span", { className: `badge ${d.online ? "online" : "offline"}`, textContent: d.online ? "online" : "offline" }),
          el("span", { className: "count", textContent: `acked ${d.acked_offset}${behind > 0 ? ` (${behind} behind)` : ""}, last seen ${new Date(d.last_seen_at).toLocaleString()}` }),
          el("span", { className: "actions" }, button("Disconnect", `Disconnect device ${d.device} of ${username}`, () => disconnect(username, d.device), "secondary")),
        );
      }),
    );
    if (!info.devices.length) $("device-list").append(el("li", { textContent: "No devices yet." }));
    if (focused) [...$("device-list").querySelectorAll("button")].find((b) => b.getAttribute("aria-label") === focused)?.focus();
    else if (focus) $("devices-title").focus();
  } catch (err) {
    if (generation === state.generation) say("users-status", `Cannot read the devices of ${username}: ${err.describe()}`, { error: true });
  }
}

function refreshDevicesSoon(username) {
  if (state.selectedUser !== username) return;
  const generation = state.generation;
  setTimeout(() => {
    if (generation === state.generation && state.selectedUser === username) showDevices(username, { focus: false });
  }, REFRESH_AFTER_ACTION_MS);
}

async function disconnect(username, device) {
  const what = device ? `device ${device} of ${username}` : `every socket of ${username}`;
  const generation = state.generation;
  try {
    await api("POST", `users/${encodeURIComponent(username)}/disconnect`, device ? { device } : {});
    if (generation !== state.generation) return;
    say("users-status", `Disconnected ${what}; its clients will reconnect.`);
    refreshDevicesSoon(username);
  } catch (err) {
    if (generation === state.generation) say("users-status", `Cannot disconnect ${what}: ${err.describe()}`, { error: true });
  }
}

async function revoke(username) {
  if (!window.confirm(`Revoke every session of ${username}? Their pages and apps are signed out and must sign in again.`)) return;
  const generation = state.generation;
  try {
    const { revoked } = await api("POST", `users/${encodeURIComponent(username)}/sessions/revoke`);
    if (generation !== state.generation) return;
    say("users-status", `Revoked ${revoked} ${revoked === 1 ? "session" : "sessions"} of ${username}.`);
    refreshDevicesSoon(username);
  } catch (err) {
    if (generation === state.generation) say("users-status", `Cannot revoke the sessions of ${username}: ${err.describe()}`, { error: true });
  }
}

// ---- broadcast -----------------------------------------------------------------------------

function prefillBroadcast(topic) {
  $("broadcast-topic").value = topic;
  $("broadcast-event").focus();
}

function broadcastError(text, field) {
  say("broadcast-error", text);
  say("broadcast-status", "");
  for (const id of ["broadcast-topic", "broadcast-event", "broadcast-payload"]) $(id).removeAttribute("aria-invalid");
  if (field) {
    $(field).setAttribute("aria-invalid", "true");
    $(field).focus();
  }
}

async function sendBroadcast(event) {
  event.preventDefault();
  const topic = $("broadcast-topic").value.trim();
  const name = $("broadcast-event").value.trim();
  const raw = $("broadcast-payload").value.trim();
  if (!topic) return broadcastError("Name a topic, e.g. room:lobby or user:alice.", "broadcast-topic");
  if (!name) return broadcastError("Name the event, e.g. notice.", "broadcast-event");
  const body = { topic, event: name };
  if (raw) {
    try {
      body.payload = JSON.parse(raw);
    } catch (err) {
      return broadcastError(`The payload is not valid JSON: ${err.message}. Leave it empty to send {}.`, "broadcast-payload");
    }
  }
  broadcastError("");
  say("broadcast-status", "Sending…");
  const generation = state.generation;
  try {
    const { subscribers } = await api("POST", "broadcast", body);
    if (generation !== state.generation) return;
    say("broadcast-status", `Sent ${name} to ${topic}: ${subscribers} ${subscribers === 1 ? "subscriber" : "subscribers"} on this node.`);
  } catch (err) {
    if (generation === state.generation) broadcastError(`The server refused the broadcast: ${err.describe()}`);
  }
}

// ---- wiring --------------------------------------------------------------------------------

$("login-form").addEventListener("submit", signIn);
$("forget").addEventListener("click", () => {
  forgetStoredToken();
  showLogin("");
  $("login-note").textContent = "The token is forgotten; paste it again to go on.";
});
$("topics-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.topics.prefix = $("topics-prefix").value.trim();
  listTopics();
});
$("topics-next").addEventListener("click", () => listTopics(state.topics.next));
$("topics-first").addEventListener("click", () => listTopics());
$("users-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.users.prefix = $("users-prefix").value.trim();
  listUsers();
});
$("users-next").addEventListener("click", () => listUsers(state.users.next));
$("users-first").addEventListener("click", () => listUsers());
$("broadcast-form").addEventListener("submit", sendBroadcast);
$("devices-refresh").addEventListener("click", () => {
  if (state.selectedUser) showDevices(state.selectedUser, { focus: false });
});
window.addEventListener("resize", () => drawCharts(Date.now()));

const saved = storedToken();
if (saved) showDashboard(saved);
else $("token").focus();
