// Test-only OpenID provider for Custodian's console tests (never for production).
//
//   node provider.mjs <port> '<clients JSON>'
//
// <clients JSON> is an array of {client_id, client_secret, redirect_uris}. The process
// prints `ready <issuer>` once it listens.
//
// Dev interactions: POST prompt=login&login=<sub>&password=x to /interaction/:uid, then
// prompt=consent.
//
// Negative tests: PUT /__test/mode/<mode> makes every later /token response carry an ID
// token re-signed with a changed claim or key, so the relying party must reject it:
//   aud   - audience is another client      nonce - a nonce the client never sent
//   iss   - another issuer                  key   - signed by a key not in the JWKS
//   exp   - already expired                 same  - re-signed unchanged (must pass)
//   none  - back to the provider's own tokens
import { createHash, createSign, generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, clientsJson] = process.argv.slice(2);
if (!port || !clientsJson) {
  console.error('usage: node provider.mjs <port> <clients JSON>');
  process.exit(2);
}
const clients = JSON.parse(clientsJson).map((c) => ({
  client_id: c.client_id,
  client_secret: c.client_secret,
  redirect_uris: c.redirect_uris,
  grant_types: ['authorization_code'],
  response_types: ['code'],
}));

const issuer = `http://127.0.0.1:${port}`;
const KID = 'custodian-test-key';

function rsaKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return privateKey;
}
const signingKey = rsaKey();
// Same kid, different key: a token signed with it must fail signature verification.
const foreignKey = rsaKey();

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [{ ...signingKey.export({ format: 'jwk' }), kid: KID, use: 'sig', alg: 'RS256' }] },
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => true },
  async findAccount(ctx, sub) {
    return { accountId: sub, async claims() { return { sub }; } };
  },
});

const b64url = (buf) => Buffer.from(buf).toString('base64url');

function resign(idToken, mode) {
  const [, payloadPart] = idToken.split('.');
  const claims = JSON.parse(Buffer.from(payloadPart, 'base64url').toString('utf8'));
  let key = signingKey;
  switch (mode) {
    case 'aud': claims.aud = 'another-client'; break;
    case 'nonce': claims.nonce = b64url(createHash('sha256').update('not the nonce').digest()); break;
    case 'iss': claims.iss = 'http://127.0.0.1:1/not-the-issuer'; break;
    case 'exp': claims.iat -= 7200; claims.exp = Math.floor(Date.now() / 1000) - 3600; break;
    case 'key': key = foreignKey; break;
    case 'same': break;
    default: return idToken;
  }
  const header = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', kid: KID }));
  const body = b64url(JSON.stringify(claims));
  const signer = createSign('RSA-SHA256');
  signer.update(`${header}.${body}`);
  return `${header}.${body}.${b64url(signer.sign(key))}`;
}

const MODES = new Set(['none', 'same', 'aud', 'nonce', 'iss', 'key', 'exp']);
let mode = 'none';

provider.use(async (ctx, next) => {
  const m = ctx.path.match(/^\/__test\/mode\/([a-z]+)$/);
  if (m && ctx.method === 'PUT') {
    if (!MODES.has(m[1])) {
      ctx.status = 400;
      ctx.body = 'unknown mode';
      return;
    }
    mode = m[1];
    ctx.body = `mode ${mode}`;
    return;
  }
  await next();
  if (ctx.path === '/token' && mode !== 'none' && ctx.body && typeof ctx.body.id_token === 'string') {
    ctx.body = { ...ctx.body, id_token: resign(ctx.body.id_token, mode) };
  }
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
