// An independent Standard Webhooks receiver for Custodian's tests: an HTTPS server that
// verifies every delivery with the reference JavaScript library (npm `standardwebhooks`),
// not with Custodian's code. Started by tests/it/platform/webhooks.rs:
//
//   node receiver.js <cert.pem> <key.pem>      prints "listening <port>" once ready
//
// POST /hook       a delivery: 204 when the signature verifies, 401 when it does not,
//                  503 while a simulated outage lasts (before verifying)
// POST /control    JSON {secret?, fail_next?, clock_offset_secs?}: the endpoint's secret,
//                  how many next deliveries to answer 503, and a shift of this receiver's
//                  clock (to replay a captured delivery "later")
// GET  /received   JSON list of every delivery: {id, timestamp, signature, body, verified,
//                  error}
import https from "node:https";
import fs from "node:fs";
import { Webhook } from "standardwebhooks";

const [cert, key] = process.argv.slice(2);
let secret = null;
let failNext = 0;
let clockOffset = 0;
const received = [];

const realNow = Date.now;
Date.now = () => realNow() + clockOffset * 1000;

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function answer(res, status, value) {
  const body = value === undefined ? "" : JSON.stringify(value);
  res.writeHead(status, { "content-type": "application/json" });
  res.end(body);
}

const server = https.createServer(
  { cert: fs.readFileSync(cert), key: fs.readFileSync(key) },
  async (req, res) => {
    const body = await readBody(req);
    if (req.method === "POST" && req.url === "/control") {
      const c = JSON.parse(body);
      if (c.secret !== undefined) secret = c.secret;
      if (c.fail_next !== undefined) failNext = c.fail_next;
      if (c.clock_offset_secs !== undefined) clockOffset = c.clock_offset_secs;
      return answer(res, 200, { ok: true });
    }
    if (req.method === "GET" && req.url === "/received") {
      return answer(res, 200, received);
    }
    if (req.method === "POST" && req.url === "/hook") {
      const entry = {
        id: req.headers["webhook-id"] ?? null,
        timestamp: req.headers["webhook-timestamp"] ?? null,
        signature: req.headers["webhook-signature"] ?? null,
        body,
        verified: false,
        error: null,
      };
      if (failNext > 0) {
        failNext -= 1;
        entry.error = "simulated outage";
        received.push(entry);
        return answer(res, 503, { error: entry.error });
      }
      try {
        new Webhook(secret).verify(body, req.headers);
        entry.verified = true;
      } catch (e) {
        entry.error = String(e.message ?? e);
      }
      received.push(entry);
      return entry.verified ? answer(res, 204) : answer(res, 401, { error: entry.error });
    }
    answer(res, 404, { error: "not found" });
  },
);

server.listen(0, "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
