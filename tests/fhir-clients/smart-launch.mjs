// A SMART app built on the SMART `fhirclient` library (its Node adapter, as the library's
// documentation shows it: `smart(req, res, storage).authorize(...)` on the launch route,
// `.ready()` on the redirect URI), used by tests/it/api/smart_launch.rs for a standalone
// launch against Custodian and the test OpenID provider. No workarounds: the app knows
// only the FHIR base URL, its client id and its scopes; everything else comes from
// `<base>/.well-known/smart-configuration` and the provider.
//
//   CUSTODIAN_FHIR_BASE=https://localhost:<port>/fhir SMART_APP_PORT=<port>
//   SMART_CLIENT_ID=<id> NODE_EXTRA_CA_CERTS=<test certificate> node smart-launch.mjs
//
// Prints `ready <port>` once it listens. Routes:
//   GET /launch?as=clinician            standalone launch with user/ scopes; after the
//                                       redirect back it creates two Patients and three
//                                       Observations of the first through the client
//   GET /launch?as=patient&other=<id>   standalone launch with `launch/patient openid
//                                       fhirUser patient/*.read`; after the redirect back
//                                       it reads the patient in context, searches (paged,
//                                       with references resolved) and tries Patient/<other>
//   GET /callback                       the redirect URI: `ready()`, then the steps above;
//                                       answers 200 with a JSON report, or 500 with the error
import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const smart = require('fhirclient/lib/entry/node');

const base = process.env.CUSTODIAN_FHIR_BASE;
const port = Number(process.env.SMART_APP_PORT);
const clientId = process.env.SMART_CLIENT_ID;
if (!base || !port || !clientId) {
  throw new Error('CUSTODIAN_FHIR_BASE, SMART_APP_PORT and SMART_CLIENT_ID are required');
}

const SCOPES = {
  clinician: 'openid fhirUser user/Patient.cruds user/Observation.cruds',
  patient: 'launch/patient openid fhirUser patient/*.read',
};

// Server-side sessions keyed by a cookie, as an Express app with express-session would
// keep them; fhirclient keeps its launch state in the session through this storage.
const sessions = new Map();
function session(req, res) {
  const sid = /(?:^|;\s*)smart_sid=([\w-]+)/.exec(req.headers.cookie ?? '')?.[1];
  if (sid && sessions.has(sid)) return sessions.get(sid);
  const fresh = randomBytes(16).toString('base64url');
  const data = new Map();
  sessions.set(fresh, data);
  res.setHeader('set-cookie', `smart_sid=${fresh}; Path=/; HttpOnly; SameSite=Lax`);
  return data;
}
function storage(data) {
  return {
    async get(key) {
      return data.get(key);
    },
    async set(key, value) {
      data.set(key, value);
      return value;
    },
    async unset(key) {
      return data.delete(key);
    },
  };
}

async function clinicianSteps(client) {
  const patient = await client.create({
    resourceType: 'Patient',
    identifier: [{ system: 'urn:custodian:mrn', value: `SMART-${randomBytes(4).toString('hex')}` }],
    name: [{ family: 'Launchpad', given: ['Sam'] }],
    gender: 'female',
    birthDate: '1984-02-29',
  });
  // Another patient on the same care team: the patient's app must not reach it.
  const other = await client.create({
    resourceType: 'Patient',
    identifier: [{ system: 'urn:custodian:mrn', value: `SMART-${randomBytes(4).toString('hex')}` }],
    name: [{ family: 'Neighbour', given: ['Alex'] }],
    gender: 'male',
    birthDate: '1979-07-01',
  });
  const observations = [];
  for (const value of [61, 64, 70]) {
    const o = await client.create({
      resourceType: 'Observation',
      status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
      subject: { reference: `Patient/${patient.id}` },
      effectiveDateTime: '2026-11-20T08:00:00Z',
      valueQuantity: { value, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    });
    observations.push(o.id);
  }
  return { patient: patient.id, other: other.id, observations };
}

async function patientSteps(client, other) {
  const id = client.patient.id;
  const report = {
    patient: id,
    fhirUser: client.user.fhirUser,
    scope: client.state.tokenResponse.scope,
  };
  const me = await client.patient.read();
  report.read = { resourceType: me.resourceType, id: me.id, family: me.name?.[0]?.family };
  const direct = await client.request(`Patient/${id}`);
  report.request = { resourceType: direct.resourceType, id: direct.id };
  // A search through the client, two per page, every page followed (absolute `next`
  // links), each Observation's subject resolved by the client.
  const observations = await client.request(`Observation?patient=${id}&_count=2`, {
    pageLimit: 0,
    flat: true,
    resolveReferences: ['subject'],
  });
  report.observations = observations.map((o) => ({
    id: o.id,
    subject: o.subject?.resourceType === 'Patient' ? o.subject.id : o.subject?.reference,
  }));
  // The same search in the patient's context (the client adds `patient=<id>`).
  const inContext = await client.patient.request('Observation', { pageLimit: 0, flat: true });
  report.inContext = inContext.map((o) => o.id);
  const patients = await client.request('Patient', { pageLimit: 0, flat: true });
  report.patients = patients.map((p) => p.id);
  try {
    await client.request(`Patient/${other}`);
    report.other = 200;
  } catch (e) {
    report.other = e.status ?? String(e);
  }
  return report;
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url, `http://127.0.0.1:${port}`);
  const data = session(req, res);
  try {
    if (url.pathname === '/launch') {
      const as = url.searchParams.get('as');
      if (!SCOPES[as]) throw new Error(`unknown launch ${as}`);
      data.set('app:as', as);
      data.set('app:other', url.searchParams.get('other'));
      await smart(req, res, storage(data)).authorize({
        iss: base,
        clientId,
        scope: SCOPES[as],
        redirectUri: '/callback',
        // Refuse a server that does not publish PKCE S256 in its SMART configuration.
        pkceMode: 'required',
      });
      return;
    }
    if (url.pathname === '/callback') {
      const client = await smart(req, res, storage(data)).ready();
      const as = data.get('app:as');
      const report =
        as === 'clinician' ? await clinicianSteps(client) : await patientSteps(client, data.get('app:other'));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(report));
      return;
    }
    res.writeHead(404);
    res.end();
  } catch (e) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(`${e.status ?? ''} ${e.stack ?? e}`);
  }
});
server.listen(port, '127.0.0.1', () => console.log(`ready ${port}`));
