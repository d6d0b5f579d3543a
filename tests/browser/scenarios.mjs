// Browser scenarios for imd's web client, in Debian's chromium driven by playwright-core.
// Run by tests/browser.rs, which starts the daemon and passes IMD_URL and IMD_BROADCAST_SECRET; a
// line `@@stop` / `@@start` on stdout asks it to stop / restart the daemon (same port and
// database), and it answers `stopped` / `started` on stdin. IMD_SCREENSHOTS=DIR saves PNGs.
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const URL = process.env.IMD_URL;
const ADMIN = process.env.IMD_BROADCAST_SECRET;
const SHOTS = process.env.IMD_SCREENSHOTS;
const WAIT = 15000;
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 760 };

const input = createInterface({ input: process.stdin });
const replies = input[Symbol.asyncIterator]();
/** Asks the Rust side to stop or start the daemon and waits for its answer. */
async function daemon(verb) {
  console.log(`@@${verb}`);
  const answer = await Promise.race([replies.next(), new Promise((_, no) => setTimeout(() => no(new Error(`no answer to ${verb}`)), WAIT))]);
  if (answer.value !== `${verb === 'stop' ? 'stopped' : 'started'}`) throw new Error(`unexpected answer ${answer.value}`);
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  // The machine's network is closed: without these Chromium waits on refused connections.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  // launch() gives every run a fresh temporary profile (user-data-dir) and removes it on close.
});

const dialogs = [];
async function newPage(viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('dialog', (dialog) => {
    dialogs.push(dialog.message());
    dialog.dismiss();
  });
  page.on('pageerror', (error) => console.log(`page error: ${error.message}`));
  page.on('console', (m) => m.type() === 'error' && console.log(`console: ${m.text()}`));
  return page;
}

async function shot(page, name, viewport) {
  if (!SHOTS) return;
  const before = page.viewportSize();
  await page.setViewportSize(viewport);
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
  await page.setViewportSize(before);
}

const online = (page) => page.locator('#conn[data-state="online"]').waitFor();
const uidOf = (page) => page.evaluate(() => JSON.parse(sessionStorage.getItem('imd.session')).uid);
const message = (page, text) => page.locator('#msg-list li', { has: page.getByText(text, { exact: true }) });
const conv = (page, chatId) => page.locator(`#convs li[data-chat="${chatId}"]`);

async function register(page, name, hash = '') {
  await page.goto(`${URL}/${hash}`);
  await page.getByLabel('Username', { exact: true }).fill(name);
  await page.getByLabel('Password', { exact: true }).fill('secret-pw');
  await page.getByRole('button', { name: 'Register' }).click();
  await online(page);
}

async function say(page, text) {
  await page.getByLabel('Message', { exact: true }).fill(text);
  await page.getByLabel('Message', { exact: true }).press('Enter');
  await message(page, text).and(page.locator('[data-state="sent"]')).waitFor();
}

async function tools(page) {
  const details = page.locator('details.tools');
  if (!(await details.getAttribute('open'))) await details.locator('summary').click();
}

/** Sends frames over a second raw WebSocket of the page's user and waits for every ack. */
function sendRaw(page, frames) {
  return page.evaluate(async (frames) => {
    const { token } = JSON.parse(sessionStorage.getItem('imd.session'));
    const ws = new WebSocket(`ws://${location.host}/?access_token=${token}&device=script`);
    let acks = 0;
    await new Promise((resolve, reject) => {
      ws.onmessage = (event) => {
        const frame = JSON.parse(event.data);
        if (frame.action === 'sync_done') for (const f of frames) ws.send(JSON.stringify(f));
        if (frame.action === 'error') reject(new Error(event.data));
        if (frame.action === 'ack' && ++acks === frames.length) resolve();
      };
    });
    ws.close();
  }, frames);
}

async function main() {
  const alice = await newPage(DESKTOP);
  const bob = await newPage(PHONE);
  if (SHOTS) {
    await alice.goto(URL);
    await shot(alice, 'login-desktop', DESKTOP);
    await shot(alice, 'login-phone', PHONE);
  }

  // Two users register and start a chat by username; unread counts follow.
  await register(alice, 'alice');
  await register(bob, 'bob');
  const [a, b] = [await uidOf(alice), await uidOf(bob)];
  const chat = `1_${Math.min(a, b)}_${Math.max(a, b)}`;
  await tools(alice);
  await alice.getByLabel('Chat with (username)').fill('bob');
  await alice.getByRole('button', { name: 'Start chat' }).click();
  await say(alice, 'hello bob');
  await conv(bob, chat).locator('.unread', { hasText: '1' }).waitFor();
  await conv(bob, chat).locator('.last', { hasText: 'hello bob' }).waitFor();
  await conv(bob, chat).locator('.title', { hasText: 'alice' }).waitFor();
  await say(alice, 'second');
  await conv(bob, chat).locator('.unread', { hasText: '2' }).waitFor();
  await conv(bob, chat).getByRole('button').click();
  await message(bob, 'second').waitFor();
  await conv(bob, chat).locator('.unread').waitFor({ state: 'detached' });
  check((await alice.locator(`#convs li[data-chat="${chat}"] .unread`).count()) === 0, 'alice has no unread in the open chat');
  await bob.getByLabel('Message', { exact: true }).fill('hi alice');
  await bob.getByRole('button', { name: 'Send' }).click();
  await message(alice, 'hi alice').waitFor();
  console.log('ok: chat both ways with unread counts');

  // Markup in a message is text; another type shows its type and a summary.
  const evil = '<img src=x onerror=alert(1)>';
  await say(alice, evil);
  await message(bob, evil).waitFor();
  check((await bob.locator('#msg-list img').count()) === 0, 'no <img> element from a message');
  await sendRaw(alice, [{ action: 'single_chat', to_uid: b, msg_type: 'image', msg_id: 'raw-img', msg: { name: 'cat.png', url: '/cat.png' } }]);
  await message(bob, '[image] cat.png').waitFor();
  check(dialogs.length === 0, `no alert ran: ${dialogs}`);
  console.log('ok: HTML shown as text, non-text summarised');

  // History pages: 40 more messages; after a reload the newest page shows, older on scroll.
  const burst = Array.from({ length: 40 }, (_, i) => ({ action: 'single_chat', to_uid: b, msg_id: `burst-${i}`, msg: `page ${i + 1}` }));
  await sendRaw(alice, burst);
  await message(bob, 'page 40').waitFor();
  await bob.reload();
  await online(bob);
  check((await bob.locator('#who').textContent()) === 'bob', 'a reload stays logged in');
  await message(bob, 'page 40').waitFor();
  check((await message(bob, 'hello bob').count()) === 0, 'only the newest page after a reload');
  await bob.locator('#messages').evaluate((box) => box.scrollTo(0, 0));
  await message(bob, 'page 10').waitFor();
  await bob.locator('#messages').evaluate((box) => box.scrollTo(0, 0));
  await message(bob, 'hello bob').waitFor();
  await alice.reload();
  await online(alice);
  await message(alice, 'page 40').and(alice.locator('.mine')).waitFor();
  console.log('ok: reload keeps the session and history pages in on scroll');

  // A broadcast is a system notice.
  const sent = await fetch(`${URL}/message/sendPublicMessage`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${ADMIN}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ data: 'maintenance at noon' }),
  });
  check(sent.ok, `broadcast: HTTP ${sent.status}`);
  await conv(alice, '0_system').locator('.last', { hasText: 'maintenance at noon' }).waitFor();
  await conv(alice, '0_system').getByRole('button').click();
  await alice.locator('#msg-list li.notice', { hasText: 'maintenance at noon' }).waitFor();
  console.log('ok: broadcast shown as a system notice');
  await shot(alice, 'chat-desktop', DESKTOP);
  await conv(alice, chat).getByRole('button').click();
  await message(alice, 'page 40').waitFor();
  await shot(alice, 'chat-desktop', DESKTOP);
  await shot(bob, 'chat-phone', PHONE);

  // Customer service: alice owns a shop, bob accepts to be its agent, carol writes to it.
  await tools(alice);
  await alice.getByLabel('New shop name').fill('Tea shop');
  await alice.getByRole('button', { name: 'Create shop' }).click();
  const created = await alice.locator('#tool-result', { hasText: 'created' }).textContent();
  const shop = created.match(/Shop (\d+)/)[1];
  await alice.getByLabel('Agent username').fill('bob');
  await alice.getByRole('button', { name: 'Add agent' }).click();
  await alice.locator('#tool-result', { hasText: 'invited' }).waitFor();
  await bob.getByRole('button', { name: 'Back to conversations' }).click();
  await tools(bob);
  await bob.getByLabel('Shop id you were invited to').fill(shop);
  await bob.getByRole('button', { name: 'Accept' }).click();
  await bob.locator('#tool-result', { hasText: `agent of shop ${shop}` }).waitFor();
  const carol = await newPage(PHONE);
  await register(carol, 'carol', `#/shop/${shop}`);
  await carol.locator('#chat-title', { hasText: `Shop ${shop}` }).waitFor();
  await say(carol, 'do you have green tea?');
  const service = `3_${shop}_${await uidOf(carol)}`;
  await bob.getByRole('button', { name: 'Customers' }).click();
  await conv(bob, service).locator('.sub', { hasText: 'handled by bob' }).waitFor();
  check((await conv(bob, chat).count()) === 0, 'the Customers view lists only customer chats');
  await conv(bob, service).getByRole('button').click();
  await message(bob, 'do you have green tea?').waitFor();
  await say(bob, 'yes, sencha and matcha');
  await message(carol, 'yes, sencha and matcha').waitFor();
  await shot(bob, 'agent-desktop', DESKTOP);
  await shot(carol, 'customer-phone', PHONE);
  console.log('ok: a customer writes to a shop and its agent answers');

  // Rooms: alice creates one, bob joins it by its id, members show online; bob leaves.
  await alice.getByLabel('New room name').fill('tea club');
  await alice.getByRole('button', { name: 'Create room' }).click();
  const room = (await alice.locator('#tool-result', { hasText: 'Room id' }).textContent()).match(/Room id: (\S+)/)[1];
  await alice.locator('#chat-title', { hasText: 'tea club' }).waitFor();
  await bob.getByRole('button', { name: 'Back to conversations' }).click();
  await bob.getByRole('button', { name: 'All' }).click();
  await bob.getByLabel('Room id to join').fill(room);
  await bob.getByRole('button', { name: 'Join room' }).click();
  await bob.locator('#chat-title', { hasText: 'tea club' }).waitFor();
  await say(bob, 'hello club');
  await message(alice, 'hello club').waitFor();
  await alice.getByRole('button', { name: 'Members' }).click();
  await alice.locator('#members li.online', { hasText: 'bob' }).waitFor();
  await alice.locator('#members li.online', { hasText: 'alice' }).waitFor();
  await bob.getByRole('button', { name: 'Leave room' }).click();
  await bob.locator('#tool-result', { hasText: `Left ${room}` }).waitFor();
  check((await conv(bob, room).count()) === 0, 'a room left is off the list');
  console.log('ok: rooms: create, join by id, members online, leave');

  // The daemon restarts mid-conversation: both pages show it, reconnect and catch up.
  await conv(alice, chat).getByRole('button').click();
  await conv(bob, chat).getByRole('button').click();
  await daemon('stop');
  await alice.locator('#conn[data-state="offline"]').waitFor();
  await bob.locator('#conn[data-state="offline"]').waitFor();
  await alice.getByLabel('Message', { exact: true }).fill('sent while down');
  await alice.getByLabel('Message', { exact: true }).press('Enter');
  const failed = message(alice, 'sent while down');
  await failed.locator('.status.failed', { hasText: 'failed — retry' }).waitFor();
  await daemon('start');
  await online(alice);
  await online(bob);
  await failed.getByRole('button', { name: 'retry' }).click();
  await failed.and(alice.locator('[data-state="sent"]')).waitFor();
  await message(bob, 'sent while down').waitFor();
  await say(bob, 'back again');
  await message(alice, 'back again').waitFor();
  check((await message(bob, 'sent while down').count()) === 1, 'the retried message shows once');
  console.log('ok: both pages reconnect after a daemon restart; a retry is not doubled');
}

try {
  await main();
} finally {
  input.close(); // else the open stdin keeps node running
  await browser.close();
}
