// Building the DOM: text from the network only ever goes in through textContent.

/** An element with attributes and children (strings become text nodes, never HTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

/** One line for any message: its text, or for another type the type and a short summary. */
export function summary(message) {
  if (!message) return '';
  const type = message.msg_type || 'text';
  if (type === 'text' && typeof message.msg === 'string') return message.msg;
  const body = message.msg;
  let detail = '';
  if (body && typeof body === 'object') {
    detail = ['name', 'title', 'text', 'url'].map((key) => body[key]).find((v) => typeof v === 'string') || '';
    if (!detail) detail = JSON.stringify(body);
  } else if (body !== undefined) {
    detail = String(body);
  }
  if (detail.length > 80) detail = detail.slice(0, 79) + '…';
  return `[${type}] ${detail}`.trim();
}

function time(ts) {
  if (!ts) return '';
  const date = new Date(ts);
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

/**
 * A message's list item. `pending` (own, not yet acked) carries `state` 'sending' or
 * 'failed' and `retry`, the function that resends it.
 */
export function messageItem(message, mine, pending) {
  const system = message.chat_type === 0 || message.action === 'public_message';
  const state = pending ? pending.state : 'sent';
  const item = el('li', {
    class: `msg${mine ? ' mine' : ''}${system ? ' notice' : ''}`,
    'data-id': message.id,
    'data-msg-id': message.msg_id,
    'data-state': state,
  });
  const head = el('p', { class: 'meta' }, system ? 'System notice' : message.from_name || `user ${message.from_uid}`);
  if (message.ts) head.append(' · ', el('time', { datetime: new Date(message.ts).toISOString() }, time(message.ts)));
  const text = el('p', { class: message.msg_type && message.msg_type !== 'text' ? 'body other' : 'body' }, summary(message));
  item.append(head, text);
  if (state === 'sending') item.append(el('p', { class: 'status' }, 'sending'));
  if (state === 'failed') {
    item.append(el('p', { class: 'status failed' }, 'failed — ', el('button', { type: 'button', class: 'link', onclick: pending.retry }, 'retry')));
  }
  return item;
}

/** A conversation's list item: title, the last message, the unread count. */
export function conversationItem(conv, title, subtitle, selected, open) {
  const unread = conv.unread > 0 ? el('span', { class: 'unread', 'aria-label': `${conv.unread} unread` }, String(conv.unread)) : null;
  const button = el(
    'button',
    { type: 'button', class: 'conv', 'aria-current': selected ? 'true' : null, onclick: open },
    el('span', { class: 'title' }, title),
    unread,
    subtitle ? el('span', { class: 'sub' }, subtitle) : null,
    el('span', { class: 'last' }, summary(conv.last)),
  );
  return el('li', { 'data-chat': conv.chat_id }, button);
}
