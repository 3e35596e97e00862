// client.js - drives examples/websocket for tests/test_websocket.c.
//
//   node client.js SCENARIO PORT [ARGS...]
//
// Prints what it got as key=value lines on stdout (the C suite asserts
// them) and exits 0; on a failure it prints the reason on stderr and exits
// non-zero.  Scenarios:
//
//   echo SIZE text|binary   one message of SIZE bytes, compared with its echo
//   frag                    a text message in three fragments, a ping between
//                           them and a UTF-8 character split across two
//   ping                    pings of 0, 5 and 125 bytes
//   close [CODE [REASON]]   close handshake started by the client
//   raw HEX... [| HEX...]   write frames behind ws's back, wait for the close
//                           (each group after "|" on a new connection)
//   text HEX                send bytes as a text message (ws does not check)
//   big SIZE [FRAGMENTS]    a binary message of SIZE bytes, maybe fragmented
//   series MS SIZE...       binary messages sent at once, not reading their
//                           echoes for the first MS milliseconds
//   http REQUEST...         write raw HTTP requests, read the answers (each
//                           argument on a new connection)
//   burst N                 N connections at once, each echoes and closes
//
// Every scenario gives up after WATCHDOG_MS.
'use strict';

const net = require('net');
let WebSocket;
try {
  WebSocket = require('ws');
} catch (e) {
  // Exit status 3 tells the suite that the client is missing, not broken.
  process.stderr.write(`client.js: cannot load ws: ${e.message}\n`);
  process.exit(3);
}

// GOEV_TEST_SCALE=N: the server is a build N times slower (ThreadSanitizer).
const SCALE = Math.max(1, parseInt(process.env.GOEV_TEST_SCALE || '1', 10) || 1);
const WATCHDOG_MS = 10000 * SCALE;
const [scenario, portArg, ...args] = process.argv.slice(2);
const port = Number(portArg);
const url = `ws://127.0.0.1:${port}/any/path?q=1`;

function fail(msg) {
  process.stderr.write(`client ${scenario}: ${msg}\n`);
  process.exit(1);
}

function report(kv) {
  for (const [k, v] of Object.entries(kv))
    process.stdout.write(`${k}=${v}\n`);
  process.exit(0);
}

setTimeout(() => fail(`no result within ${WATCHDOG_MS} ms`), WATCHDOG_MS).unref();

// Deterministic payloads.  Text mixes characters of 1 to 4 bytes, padded
// with ASCII to exactly `size` bytes.
function payload(size, text) {
  if (!text) {
    const b = Buffer.allocUnsafe(size);
    for (let i = 0; i < size; i++)
      b[i] = (i * 7 + (i >> 8) + 13) & 0xff;
    return b;
  }
  const unit = Buffer.from('abc\u00e9\u20ac\u{1F600}xyz ');
  const whole = size - (size % unit.length);
  const b = Buffer.alloc(size, 'x');
  if (whole)
    b.fill(unit, 0, whole);
  return b;
}

// Watches the raw bytes from the server, beside ws's own parser, and
// records each frame as "opcode:fin:length", so that a test can tell that
// a message came back as one unfragmented frame.  Payloads are skipped,
// never kept.
function tapFrames(ws) {
  const frames = [];
  let head = [];          // header bytes so far (at most 14)
  let skip = 0;           // payload bytes of the last frame still to pass
  ws._socket.on('data', (chunk) => {
    let off = 0;
    while (off < chunk.length) {
      if (skip) {
        const n = Math.min(skip, chunk.length - off);
        skip -= n;
        off += n;
        continue;
      }
      head.push(chunk[off++]);
      if (head.length < 2)
        continue;
      const len7 = head[1] & 0x7f;
      const hlen = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (head[1] & 0x80 ? 4 : 0);
      if (head.length < hlen)
        continue;
      let len = len7;
      if (len7 >= 126) {
        len = 0;
        for (let i = 2; i < (len7 === 126 ? 4 : 10); i++)
          len = len * 256 + head[i];
      }
      frames.push(`${head[0] & 0x0f}:${head[0] >> 7}:${len}`);
      skip = len;
      head = [];
    }
  });
  return frames;
}

function open(onOpen) {
  const ws = new WebSocket(url);
  ws.on('error', (e) => fail(`websocket error: ${e.message}`));
  ws.on('open', () => onOpen(ws));
  return ws;
}

// Resolve with [code, reason] when the connection has closed.
function closed(ws) {
  return new Promise((resolve) => ws.on('close', (code, reason) => resolve([code, reason.toString()])));
}

// Write a raw HTTP request (which may hold several) on a new connection
// and read the answers: each a head and Content-Length bytes of body.  Ends
// at EOF, or after a 101.  Resolves with the statuses, the headers of the
// first answer, the Sec-WebSocket-Accept of a 101, and whether EOF came.
function httpExchange(req) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const r = { statuses: [], headers: {}, accept: '', eof: 0 };
    const parse = () => {
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0)
          return false;
        const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
        const m = /^HTTP\/1\.1 (\d{3}) /.exec(lines[0]);
        if (!m)
          fail(`bad status line ${JSON.stringify(lines[0])}`);
        const h = {};
        for (const l of lines.slice(1)) {
          const i = l.indexOf(':');
          h[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
        }
        const blen = Number(h['content-length'] || 0);
        if (buf.length < end + 4 + blen)
          return false;
        buf = buf.subarray(end + 4 + blen);
        if (!r.statuses.length)
          r.headers = h;
        r.statuses.push(m[1]);
        if (m[1] === '101') {
          r.accept = h['sec-websocket-accept'] || '';
          return true;
        }
      }
    };
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (parse()) {
        sock.destroy();
        resolve(r);
      }
    });
    sock.on('end', () => {
      r.eof = 1;
      resolve(r);
    });
    sock.on('error', (e) => fail(`socket error: ${e.message}`));
    sock.write(req, 'latin1');
  });
}

const scenarios = {
  echo() {
    const size = Number(args[0]);
    const text = args[1] === 'text';
    const sent = payload(size, text);
    open((ws) => {
      const frames = tapFrames(ws);
      ws.on('message', async (data, isBinary) => {
        const equal = Buffer.compare(data, sent) === 0;
        ws.close(1000);
        const [code] = await closed(ws);
        report({
          echoed: data.length,
          type: isBinary ? 'binary' : 'text',
          equal: equal ? 1 : 0,
          frames: frames.join(','),
          code,
        });
      });
      ws.send(sent, { binary: !text });
    });
  },

  frag() {
    // "h\u00e9llo \u20ac!" with the three bytes of the euro sign split
    // over the second and third fragment.
    const whole = Buffer.from('h\u00e9llo \u20ac!');
    const cut = whole.indexOf(0xe2) + 1;
    open((ws) => {
      const frames = tapFrames(ws);
      let pong = null;
      ws.on('pong', (data) => { pong = data.toString('hex'); });
      ws.on('message', async (data, isBinary) => {
        ws.close(1000);
        await closed(ws);
        report({
          message: data.toString('hex'),
          type: isBinary ? 'binary' : 'text',
          pong,
          frames: frames.join(','),
        });
      });
      ws.send(whole.subarray(0, 3), { binary: false, fin: false });
      ws.ping(Buffer.from('mid'));
      ws.send(whole.subarray(3, cut), { binary: false, fin: false });
      ws.send(whole.subarray(cut), { binary: false, fin: true });
    });
  },

  ping() {
    const pings = [Buffer.alloc(0), Buffer.from('hello'), Buffer.alloc(125, 'p')];
    open((ws) => {
      const pongs = [];
      ws.on('pong', async (data) => {
        pongs.push(data.toString('hex'));
        if (pongs.length < pings.length)
          return;
        ws.close(1000);
        await closed(ws);
        report({ pongs: pongs.join(',') });
      });
      for (const p of pings)
        ws.ping(p);
    });
  },

  close() {
    const code = args[0] === undefined ? undefined : Number(args[0]);
    open(async (ws) => {
      ws.close(code, args[1]);
      const [got, reason] = await closed(ws);
      report({ code: got, reason });
    });
  },

  async raw() {
    // Groups of frames separated by "|", each on a connection of its own,
    // one after the other; the results are listed in the same order.
    const groups = args.join(' ').split('|').map((g) => g.trim().split(' ').filter(Boolean));
    const codes = [], messages = [], pongs = [];
    for (const frames of groups) {
      await new Promise((resolve) => open(async (ws) => {
        let m = 0, p = 0;
        ws.on('message', () => m++);
        ws.on('pong', () => p++);
        for (const hex of frames)
          ws._socket.write(Buffer.from(hex, 'hex'));
        const [code] = await closed(ws);
        codes.push(code);
        messages.push(m);
        pongs.push(p);
        resolve();
      }));
    }
    report({ code: codes.join(','), messages: messages.join(','), pongs: pongs.join(',') });
  },

  text() {
    open(async (ws) => {
      let messages = 0;
      ws.on('message', () => messages++);
      ws.send(Buffer.from(args[0], 'hex'), { binary: false });
      const [code] = await closed(ws);
      report({ code, messages });
    });
  },

  big() {
    const size = Number(args[0]);
    const parts = Number(args[1] || 1);
    const data = payload(size, false);
    open(async (ws) => {
      let messages = 0, equal = 0;
      ws.on('message', (got) => {
        messages++;
        equal = Buffer.compare(got, data) === 0 ? 1 : 0;
        ws.close(1000);
      });
      const step = Math.ceil(size / parts);
      for (let i = 0; i < parts; i++)
        ws.send(data.subarray(i * step, Math.min(size, (i + 1) * step)),
                { binary: true, fin: i === parts - 1 });
      const [code] = await closed(ws);
      report({ code, messages, equal });
    });
  },

  series() {
    const stall = Number(args[0]);
    const sizes = args.slice(1).map(Number);
    open((ws) => {
      let got = 0, equal = 0;
      ws.on('message', async (data) => {
        const want = payload(sizes[got], false);
        if (Buffer.compare(data, want) === 0)
          equal++;
        if (++got < sizes.length)
          return;
        ws.close(1000);
        const [code] = await closed(ws);
        report({ echoed: got, equal, code });
      });
      // A client that does not read: the server's queue for it grows
      // until it stops reading too, and must start again afterwards.
      ws._socket.pause();
      setTimeout(() => ws._socket.resume(), stall);
      for (const size of sizes)
        ws.send(payload(size, false));
    });
  },

  async http() {
    // Each request on a connection of its own, one after the other.
    const results = [];
    for (const req of args)
      results.push(await httpExchange(req));
    const first = results[0].headers;
    report({
      statuses: results.map((r) => r.statuses.join(',')).join(';'),
      upgrade: first.upgrade || '',
      version: first['sec-websocket-version'] || '',
      connection: first.connection || '',
      accept: results[0].accept,
      eof: results.map((r) => r.eof).join(','),
    });
  },

  burst() {
    const n = Number(args[0]);
    let ok = 0, closes = 0;
    for (let i = 0; i < n; i++) {
      const sent = payload(1000 + i, i % 2 === 0);
      open((ws) => {
        ws.on('message', (data) => {
          if (Buffer.compare(data, sent) === 0)
            ok++;
          ws.close(1000);
        });
        ws.on('close', (code) => {
          if (code !== 1000)
            fail(`connection ${i} closed with ${code}`);
          if (++closes === n)
            report({ closed: closes, ok });
        });
        ws.send(sent, { binary: i % 2 === 1 });
      });
    }
  },
};

if (!scenarios[scenario] || !(port > 0))
  fail(`usage: client.js SCENARIO PORT [ARGS...] (scenarios: ${Object.keys(scenarios).join(' ')})`);
scenarios[scenario]();
