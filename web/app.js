// The client's state and wiring: login, the conversation list, one open chat, sending.
import { api, newMsgId, Socket } from './net.js';
import { conversationItem, el, messageItem } from './view.js';

const $ = (id) => document.getElementById(id);
const PAGE = 30; // messages per history page
const ACK_TIMEOUT = 10000;
const MESSAGE_ACTIONS = new Set(['single_chat', 'group_chat', 'service_chat', 'public_message']);

const state = {
  session: null, // {token, uid, username}
  socket: null,
  convs: new Map(), // chat_id -> {chat_id, chat_type, last, last_seq, read_seq, unread}
  messages: new Map(), // chat_id -> Map(id -> message)
  hasMore: new Map(), // chat_id -> whether older history exists
  pending: new Map(), // msg_id -> {chat_id, frame, state, timer}
  names: new Map(), // uid -> username
  roomNames: new Map(), // chat_id -> the room's name, if it has one
  open: null, // chat_id shown
  filter: 'all',
};

// ---- session ----

function loadSession() {
  try {
    return JSON.parse(sessionStorage.getItem('imd.session'));
  } catch {
    return null;
  }
}

function startSession(session) {
  state.session = session;
  sessionStorage.setItem('imd.session', JSON.stringify(session));
  state.names.set(session.uid, session.username);
  $('login').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  $('who').textContent = session.username;
  state.socket = new Socket(session.token, {
    frame: onFrame,
    state: showConnection,
    refused: () => endSession('Your session ended; please log in again.'),
    checkToken: () => api('/user/me', session.token).catch((e) => e.code === 401 && endSession('Your session ended; please log in again.')),
  });
  state.socket.open();
  route();
}

function endSession(message = '') {
  state.socket?.close();
  sessionStorage.removeItem('imd.session');
  for (const p of state.pending.values()) clearTimeout(p.timer);
  Object.assign(state, { session: null, socket: null, open: null });
  for (const key of ['convs', 'messages', 'hasMore', 'pending']) state[key].clear();
  $('app').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('who').textContent = '';
  $('convs').replaceChildren();
  $('login-error').textContent = message;
  showConnection('offline');
  $('username').focus();
}

async function authenticate(path) {
  const username = $('username').value.trim();
  const password = $('password').value;
  $('login-error').textContent = '';
  try {
    const data = await api(path, null, { username, password }, 'POST');
    $('password').value = '';
    startSession({ token: data.access_token, uid: data.uid, username: data.username });
  } catch (e) {
    $('login-error').textContent = e.message;
  }
}

function showConnection(name, wait) {
  const text = {
    connecting: 'Connecting…',
    syncing: 'Syncing…',
    online: 'Online',
    offline: wait ? `Offline — reconnecting in ${Math.ceil(wait / 1000)} s` : 'Offline',
  }[name];
  $('conn').textContent = text;
  $('conn').dataset.state = name;
}

// ---- conversations ----

function parseChat(chatId) {
  const [type, a, b] = chatId.split('_');
  return { type: Number(type), a: Number(a), b: Number(b) };
}

/** The uid of the other party in a 1:1 chat. */
function peerOf(chatId) {
  const { a, b } = parseChat(chatId);
  return a === state.session.uid ? b : a;
}

function nameOf(uid) {
  if (!uid) return null;
  if (!state.names.has(uid)) {
    state.names.set(uid, null);
    api('/user/lookup', state.session.token, { uid })
      .then((user) => {
        state.names.set(uid, user.username);
        renderConvs();
        if (state.open) renderTitle();
      })
      .catch(() => state.names.delete(uid));
  }
  return state.names.get(uid) || `user ${uid}`;
}

/** Title and subtitle of a conversation as this user sees it. */
function describe(conv) {
  const { type, a, b } = parseChat(conv.chat_id);
  if (type === 0) return ['System notices', ''];
  if (type === 1) return [nameOf(peerOf(conv.chat_id)), ''];
  if (type === 2) return [state.roomNames.get(conv.chat_id) || `Room ${conv.chat_id}`, ''];
  if (b === state.session.uid) return [`Shop ${a}`, 'customer service'];
  const agent = conv.agent_uid ? nameOf(conv.agent_uid) : 'nobody yet';
  return [`${nameOf(b)} · shop ${a}`, `handled by ${agent}`];
}

function isCustomerChat(chatId) {
  const { type, b } = parseChat(chatId);
  return type === 3 && b !== state.session.uid;
}

function conv(chatId) {
  if (!state.convs.has(chatId)) {
    state.convs.set(chatId, { chat_id: chatId, chat_type: parseChat(chatId).type, last: null, last_seq: 0, read_seq: 0, unread: 0 });
  }
  return state.convs.get(chatId);
}

async function loadConversations() {
  const data = await api('/message/conversations', state.session.token, { limit: 200 });
  for (const row of data.conversations) {
    const c = conv(row.chat_id);
    Object.assign(c, row);
    if (row.last?.agent_uid) c.agent_uid = row.last.agent_uid;
    if (row.name) state.roomNames.set(row.chat_id, row.name);
  }
  renderConvs();
}

function renderConvs() {
  if (!state.session) return;
  const list = [...state.convs.values()]
    .filter((c) => state.filter === 'all' || isCustomerChat(c.chat_id))
    .sort((x, y) => (y.last?.ts || 0) - (x.last?.ts || 0));
  $('convs').replaceChildren(
    ...list.map((c) => {
      const [title, sub] = describe(c);
      return conversationItem(c, title, sub, c.chat_id === state.open, () => openChat(c.chat_id));
    }),
  );
}

// ---- one open chat ----

async function openChat(chatId) {
  const c = conv(chatId);
  state.open = chatId;
  if (location.hash !== `#/c/${chatId}` && !location.hash.startsWith('#/shop/')) history.replaceState(null, '', `#/c/${chatId}`);
  $('chat').hidden = false;
  $('empty').hidden = true;
  $('app').classList.add('chatting');
  $('members').hidden = true;
  const room = c.chat_type === 2;
  $('members-btn').hidden = !room;
  $('leave-btn').hidden = !room;
  $('composer').hidden = c.chat_type === 0;
  renderTitle();
  renderConvs();
  renderMessages(true);
  if (!state.messages.has(chatId)) await loadHistory(chatId);
  else await loadHistory(chatId, undefined, true);
  markRead();
  $('message').focus();
}

function renderTitle() {
  const [title, sub] = describe(conv(state.open));
  $('chat-title').textContent = sub ? `${title} — ${sub}` : title;
}

function store(message) {
  if (!state.messages.has(message.chat_id)) state.messages.set(message.chat_id, new Map());
  const messages = state.messages.get(message.chat_id);
  if (messages.has(message.id)) return false;
  messages.set(message.id, message);
  return true;
}

/** A page of history before `before` (or the newest page); `merge` keeps what is shown. */
async function loadHistory(chatId, before, merge = false) {
  const params = { chat_id: chatId, limit: PAGE };
  if (before) params.before = before;
  let data;
  try {
    data = await api('/message/history', state.session.token, params);
  } catch {
    return; // a chat started by name has no history yet (404/403 until the first message)
  }
  if (!state.messages.has(chatId)) state.messages.set(chatId, new Map());
  for (const m of data.messages) store(m);
  if (!merge || before) state.hasMore.set(chatId, data.has_more);
  if (state.open === chatId) renderMessages(!before);
}

function renderMessages(toBottom) {
  const box = $('messages');
  const fromBottom = box.scrollHeight - box.scrollTop;
  const chatId = state.open;
  const shown = [...(state.messages.get(chatId)?.values() || [])].sort((x, y) => x.seq - y.seq);
  const items = shown.map((m) => messageItem(m, m.from_uid === state.session.uid));
  for (const [msgId, p] of state.pending) {
    if (p.chat_id !== chatId) continue;
    const draft = { ...p.frame, chat_id: chatId, from_uid: state.session.uid, from_name: state.session.username, msg_id: msgId };
    items.push(messageItem(draft, true, { state: p.state, retry: () => transmit(msgId) }));
  }
  $('msg-list').replaceChildren(...items);
  $('older').hidden = !state.hasMore.get(chatId);
  // Keeps the reader's place when older messages are put above it.
  box.scrollTop = toBottom ? box.scrollHeight : box.scrollHeight - fromBottom;
}

function markRead() {
  const c = state.convs.get(state.open);
  if (!c || document.hidden || c.last_seq <= c.read_seq) return;
  state.socket.send({ action: 'read', chat_id: c.chat_id, seq: c.last_seq });
  c.read_seq = c.last_seq;
  c.unread = 0;
  renderConvs();
}

function loadOlder() {
  const messages = state.messages.get(state.open);
  if (!messages || !state.hasMore.get(state.open) || state.loadingOlder) return;
  const oldest = Math.min(...[...messages.values()].map((m) => m.seq));
  state.loadingOlder = true;
  loadHistory(state.open, oldest).finally(() => (state.loadingOlder = false));
}

// ---- sending ----

function send(text) {
  const c = conv(state.open);
  const { type, a } = parseChat(c.chat_id);
  const frame = { msg_type: 'text', msg: text };
  if (type === 1) Object.assign(frame, { action: 'single_chat', to_uid: peerOf(c.chat_id) });
  else if (type === 2) Object.assign(frame, { action: 'group_chat', chat_id: c.chat_id });
  else if (isCustomerChat(c.chat_id)) Object.assign(frame, { action: 'service_chat', chat_id: c.chat_id });
  else Object.assign(frame, { action: 'service_chat', shop_id: a });
  const msgId = newMsgId();
  frame.msg_id = msgId;
  state.pending.set(msgId, { chat_id: c.chat_id, frame, state: 'sending', timer: 0 });
  transmit(msgId);
}

/** (Re)sends a pending message with its own msg_id: the server acks a repeat as a duplicate. */
function transmit(msgId) {
  const p = state.pending.get(msgId);
  if (!p) return;
  clearTimeout(p.timer);
  p.state = state.socket.send(p.frame) ? 'sending' : 'failed';
  if (p.state === 'sending') p.timer = setTimeout(() => fail(msgId), ACK_TIMEOUT);
  if (state.open === p.chat_id) renderMessages(true);
}

function fail(msgId) {
  const p = state.pending.get(msgId);
  if (!p) return;
  clearTimeout(p.timer);
  p.state = 'failed';
  if (state.open === p.chat_id) renderMessages(false);
}

function acked(frame) {
  const p = state.pending.get(frame.msg_id);
  if (!p) return;
  clearTimeout(p.timer);
  state.pending.delete(frame.msg_id);
  const message = {
    ...p.frame,
    chat_id: frame.chat_id,
    chat_type: parseChat(frame.chat_id).type,
    id: frame.id,
    seq: frame.seq,
    ts: frame.ts,
    from_uid: state.session.uid,
    from_name: state.session.username,
    agent_uid: frame.agent_uid,
  };
  received(message, true);
}

// ---- frames ----

/** A message from the server (live, sync or our own ack): stored once by `id`. */
function received(message, own = false) {
  if (!store(message)) return;
  const c = conv(message.chat_id);
  if (!c.last || message.seq >= (c.last.seq || 0)) c.last = message;
  c.last_seq = Math.max(c.last_seq, message.seq);
  if (message.agent_uid) c.agent_uid = message.agent_uid;
  if (own || message.from_uid === state.session.uid) c.read_seq = Math.max(c.read_seq, message.seq);
  c.unread = Math.max(0, c.last_seq - c.read_seq);
  if (state.open === message.chat_id) {
    renderMessages(true);
    markRead();
  }
  renderConvs();
}

function onFrame(frame) {
  if (MESSAGE_ACTIONS.has(frame.action) && frame.id) return received(frame);
  if (frame.action === 'ack') return acked(frame);
  if (frame.action === 'error' && frame.msg_id) return fail(frame.msg_id);
  if (frame.action === 'read' && frame.chat_id) {
    const c = conv(frame.chat_id);
    c.read_seq = Math.max(c.read_seq, Number(frame.seq) || 0);
    c.unread = Math.max(0, c.last_seq - c.read_seq);
    return renderConvs();
  }
  if (frame.action === 'sync_done') {
    // Resync: the list's counts and the open chat's newest page, then what sync cut off.
    loadConversations().catch(() => {});
    if (state.open) loadHistory(state.open, undefined, true);
  }
}

// ---- rooms, shops, routes ----

async function tool(action) {
  $('tool-result').textContent = '';
  try {
    $('tool-result').textContent = (await action()) || '';
  } catch (e) {
    $('tool-result').textContent = e.message;
  }
}

const token = () => state.session.token;

async function startChat(username) {
  const user = await api('/user/lookup', token(), { username });
  if (user.uid === state.session.uid) throw new Error('that is you');
  state.names.set(user.uid, user.username);
  const [x, y] = [user.uid, state.session.uid].sort((p, q) => p - q);
  await openChat(`1_${x}_${y}`);
}

async function showMembers() {
  const list = $('members');
  if (!list.hidden) return (list.hidden = true);
  const data = await api('/room/members', token(), { chat_id: state.open });
  list.replaceChildren(
    ...data.members.map((m) => el('li', { class: m.online ? 'online' : '' }, m.username, el('span', { class: 'sr-only' }, m.online ? ' (online)' : ' (offline)'))),
  );
  list.hidden = false;
}

function route() {
  if (!state.session) return;
  const shop = location.hash.match(/^#\/shop\/(\d+)$/);
  const chat = location.hash.match(/^#\/c\/([0-9a-z_]+)$/);
  if (shop) openChat(`3_${shop[1]}_${state.session.uid}`);
  else if (chat) openChat(chat[1]);
}

function wire() {
  const submit = (id, action) =>
    $(id).addEventListener('submit', (event) => {
      event.preventDefault();
      tool(action);
    });
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    authenticate('/user/login');
  });
  $('do-register').addEventListener('click', () => authenticate('/user/register'));
  $('logout').addEventListener('click', () => {
    api('/user/logout', token(), {}, 'POST').catch(() => {});
    endSession();
    history.replaceState(null, '', '/');
  });
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('message').value;
    if (!text.trim()) return;
    $('message').value = '';
    send(text);
  });
  $('message').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('messages').addEventListener('scroll', () => $('messages').scrollTop < 40 && loadOlder());
  $('older').addEventListener('click', loadOlder);
  $('back').addEventListener('click', () => {
    $('app').classList.remove('chatting');
    state.open = null;
    $('chat').hidden = true;
    $('empty').hidden = false;
    history.replaceState(null, '', '/');
    renderConvs();
  });
  $('members-btn').addEventListener('click', () => tool(showMembers));
  $('leave-btn').addEventListener('click', () =>
    tool(async () => {
      const chatId = state.open;
      await api('/room/leave', token(), { chat_id: chatId }, 'POST');
      state.convs.delete(chatId);
      $('back').click();
      return `Left ${chatId}`;
    }),
  );
  for (const button of document.querySelectorAll('[data-filter]')) {
    button.addEventListener('click', () => {
      state.filter = button.dataset.filter;
      for (const b of document.querySelectorAll('[data-filter]')) b.setAttribute('aria-pressed', String(b === button));
      renderConvs();
    });
  }
  submit('new-chat', () => startChat($('peer').value.trim()));
  submit('new-room', async () => {
    const name = $('room-name').value.trim();
    const data = await api('/room/create', token(), name ? { name } : {}, 'POST');
    if (name) state.roomNames.set(data.chat_id, name);
    await openChat(data.chat_id);
    return `Room id: ${data.chat_id} (others join with it)`;
  });
  submit('join-room', async () => {
    const chatId = $('room-id').value.trim();
    await api('/room/join', token(), { chat_id: chatId }, 'POST');
    await loadConversations(); // for the room's name
    await openChat(chatId);
  });
  submit('new-shop', async () => {
    const data = await api('/shop/create', token(), { name: $('shop-name').value.trim() }, 'POST');
    $('agent-shop').value = data.shop_id;
    return `Shop ${data.shop_id} created; customers open ${location.origin}/#/shop/${data.shop_id}`;
  });
  submit('add-agent', async () => {
    const user = await api('/user/lookup', token(), { username: $('agent-name').value.trim() });
    const data = await api('/shop/agent/add', token(), { shop_id: $('agent-shop').value.trim(), uid: user.uid }, 'POST');
    return data.accepted ? `${user.username} is an agent of shop ${data.shop_id}` : `${user.username} is invited to shop ${data.shop_id}`;
  });
  submit('accept-agent', async () => {
    const data = await api('/shop/agent/accept', token(), { shop_id: $('accept-shop').value.trim() }, 'POST');
    return `You are an agent of shop ${data.shop_id}`;
  });
  window.addEventListener('hashchange', route);
  document.addEventListener('visibilitychange', markRead);
}

wire();
const shopLink = location.hash.match(/^#\/shop\/(\d+)$/);
if (shopLink) {
  $('shop-hint').textContent = `Log in or register to write to shop ${shopLink[1]}.`;
  $('shop-hint').hidden = false;
}
const saved = loadSession();
if (saved?.token) startSession(saved);
else endSession();
