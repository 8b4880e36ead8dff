// Test-only OpenID provider for Custodian's console tests (never for production).
//
//   node provider.mjs <port> '<clients JSON>' ['<SMART JSON>']
//
// <clients JSON> is an array of {client_id, client_secret, redirect_uris}; a client with
// `"public": true` has no secret (token_endpoint_auth_method `none`, PKCE), as SMART apps
// that run in a browser or on a device are. The process prints `ready <issuer>` once it
// listens.
//
// <SMART JSON> ({resource, scopes}) makes the provider a SMART App Launch authorization
// server for a FHIR server: every authorization is for the resource `resource` (the FHIR
// base URL; SMART apps send it as `aud`, not as an RFC 8707 `resource`), whose access
// tokens are RS256 JWTs (`typ: at+jwt`, `aud: resource`) carrying the granted ones of
// `scopes`; `launch/patient` and `fhirUser` are understood. The launch context of a
// subject is set with PUT /__test/patient/<sub>/<Patient id>: tokens for that subject
// then carry `patient` in the token response when `launch/patient` was granted, and the
// ID token carries `fhirUser: Patient/<id>` when `fhirUser` was.
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
import Provider, { errors } from 'oidc-provider';

const [port, clientsJson, smartJson] = process.argv.slice(2);
if (!port || !clientsJson) {
  console.error('usage: node provider.mjs <port> <clients JSON>');
  process.exit(2);
}
const clients = JSON.parse(clientsJson).map((c) =>
  c.public
    ? {
        client_id: c.client_id,
        redirect_uris: c.redirect_uris,
        grant_types: ['authorization_code'],
        response_types: ['code'],
        token_endpoint_auth_method: 'none',
      }
    : {
        client_id: c.client_id,
        client_secret: c.client_secret,
        redirect_uris: c.redirect_uris,
        grant_types: ['authorization_code'],
        response_types: ['code'],
      },
);
const smart = smartJson ? JSON.parse(smartJson) : null;
// Launch context: subject -> Patient id (PUT /__test/patient/<sub>/<id>).
const launchPatient = new Map();

const issuer = `http://127.0.0.1:${port}`;
const KID = 'custodian-test-key';

function rsaKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return privateKey;
}
const signingKey = rsaKey();
// Same kid, different key: a token signed with it must fail signature verification.
const foreignKey = rsaKey();

// The SMART additions (only with <SMART JSON>): the FHIR server as the one resource server,
// and the SMART scopes that are not resource scopes.
const smartConfig = smart
  ? {
      scopes: ['openid', 'offline_access', 'launch/patient'],
      claims: { acr: null, auth_time: null, iss: null, sid: null, openid: ['sub'], fhirUser: ['fhirUser'] },
      features: {
        devInteractions: { enabled: true },
        resourceIndicators: {
          enabled: true,
          defaultResource: async () => smart.resource,
          useGrantedResource: async () => true,
          getResourceServerInfo: async (ctx, resourceIndicator) => {
            if (resourceIndicator !== smart.resource) throw new errors.InvalidTarget();
            return {
              scope: smart.scopes,
              audience: smart.resource,
              accessTokenFormat: 'jwt',
              jwt: { sign: { alg: 'RS256' } },
            };
          },
        },
      },
    }
  : { features: { devInteractions: { enabled: true } } };

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [{ ...signingKey.export({ format: 'jwk' }), kid: KID, use: 'sig', alg: 'RS256' }] },
  pkce: { required: () => true },
  ...smartConfig,
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        const patient = launchPatient.get(sub);
        return patient ? { sub, fhirUser: `Patient/${patient}` } : { sub };
      },
    };
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
  const p = ctx.path.match(/^\/__test\/patient\/([^/]+)\/([^/]+)$/);
  if (p && ctx.method === 'PUT') {
    launchPatient.set(decodeURIComponent(p[1]), decodeURIComponent(p[2]));
    ctx.body = 'launch context set';
    return;
  }
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
  // SMART launch context in the token response (the subject is the ID token's `sub`).
  if (smart && ctx.path === '/token' && ctx.body && typeof ctx.body.id_token === 'string') {
    // The response names every granted scope (SMART), not only the access token's
    // resource scopes: the authorization code's scope is what the user granted.
    const granted = [...new Set([
      ...String(ctx.oidc?.entities?.AuthorizationCode?.scope ?? '').split(' '),
      ...String(ctx.body.scope ?? '').split(' '),
    ])].filter(Boolean);
    ctx.body = { ...ctx.body, scope: granted.join(' ') };
    const { sub } = JSON.parse(Buffer.from(ctx.body.id_token.split('.')[1], 'base64url').toString('utf8'));
    if (granted.includes('launch/patient') && launchPatient.has(sub)) {
      ctx.body = { ...ctx.body, patient: launchPatient.get(sub) };
    }
  }
  if (ctx.path === '/token' && mode !== 'none' && ctx.body && typeof ctx.body.id_token === 'string') {
    ctx.body = { ...ctx.body, id_token: resign(ctx.body.id_token, mode) };
  }
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
