// The wire: HTTP calls in imd's envelope and one WebSocket that reconnects with backoff.

/** Calls `path` with the token; resolves to `data`, rejects with an Error carrying `code`. */
export async function api(path, token, params = {}, method = 'GET') {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  let url = path;
  let body;
  if (method === 'GET') {
    const query = new URLSearchParams(params).toString();
    if (query) url += `?${query}`;
  } else {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(params);
  }
  let reply;
  try {
    const response = await fetch(url, { method, headers, body });
    reply = await response.json();
  } catch {
    throw Object.assign(new Error('the server cannot be reached'), { code: 0 });
  }
  if (reply.code !== 200) throw Object.assign(new Error(reply.message || 'request failed'), { code: reply.code });
  return reply.data;
}

/** A client-side message id: unique enough per user, and available without a secure context. */
export function newMsgId() {
  const bytes = crypto.getRandomValues(new Uint8Array(9));
  return 'w-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * The WebSocket of a logged-in tab. `handlers`: frame(f), state(name, detail), refused().
 * Backoff doubles from 0.5 s to 8 s (with jitter) and resets once a sync completes.
 */
export class Socket {
  constructor(token, handlers) {
    this.token = token;
    this.handlers = handlers;
    this.ws = null;
    this.delay = 500;
    this.timer = 0;
    this.stopped = false;
  }

  open() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}/?access_token=${encodeURIComponent(this.token)}&device=web`;
    this.handlers.state('connecting');
    const ws = new WebSocket(url);
    this.ws = ws;
    let connected = false;
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.action === 'connected') {
        connected = true;
        this.handlers.state('syncing');
      } else if (frame.action === 'sync_done') {
        this.delay = 500;
        this.handlers.state('online');
      }
      this.handlers.frame(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      // 4001: the token was revoked or expired; a refused upgrade (401) never connects.
      if (event.code === 4001) return this.handlers.refused();
      if (!connected) this.handlers.checkToken?.();
      const wait = Math.round(this.delay * (0.75 + Math.random() * 0.5));
      this.delay = Math.min(this.delay * 2, 8000);
      this.handlers.state('offline', wait);
      this.timer = setTimeout(() => this.open(), wait);
    };
  }

  /** Sends a frame; false when there is no open connection. */
  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.ws?.close(1000);
    this.ws = null;
  }
}
