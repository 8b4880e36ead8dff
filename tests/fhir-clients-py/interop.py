"""Drives Custodian with the Python stock FHIR clients, as an app developer would use them
(no workarounds): PyPI `fhirpy` (beda.software) and PyPI `fhirclient` (SMART on FHIR).
Every resource a client receives is also parsed by fhirclient's strict R4 models and
checked for empty arrays, objects and strings (which FHIR JSON forbids).

Run by tests/it/api/py_clients.rs:
  CUSTODIAN_FHIR_BASE=https://localhost:<port>/fhir CUSTODIAN_TOKEN=<clinician bearer>
  REQUESTS_CA_BUNDLE=<test certificate> target/tools/fhir-clients-py/bin/python interop.py
Exits non-zero (with the reason on stderr) on the first failure; prints one JSON line per
step on stdout.
"""

import json
import os
import sys

from fhirclient import client as smart
from fhirclient.models.bundle import Bundle
from fhirclient.models.fhirelementfactory import FHIRElementFactory
from fhirclient.models.patient import Patient
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome

BASE = os.environ["CUSTODIAN_FHIR_BASE"]
TOKEN = os.environ["CUSTODIAN_TOKEN"]
RUN = os.environ.get("CUSTODIAN_RUN", "r")


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def step(client, name, **detail):
    print(json.dumps({"client": client, "step": name, **detail}), flush=True)


def no_empty(value, path):
    if isinstance(value, list):
        check(len(value) > 0, f"empty array at {path}")
        for i, v in enumerate(value):
            no_empty(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        check(len(value) > 0, f"empty object at {path}")
        for k, v in value.items():
            no_empty(v, f"{path}.{k}")
    elif isinstance(value, str):
        check(len(value) > 0, f"empty string at {path}")


def valid(resource, what):
    """fhirclient's strict R4 models parse it (unknown or mistyped elements fail)."""
    resource = json.loads(json.dumps(resource))
    no_empty(resource, what)
    try:
        FHIRElementFactory.instantiate(resource["resourceType"], resource)
    except Exception as e:  # noqa: BLE001 - any parse error is the failure
        fail(f"{what} does not parse with fhirclient's R4 models: {e}")
    return resource


def patient(mrn, family):
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:custodian:mrn", "value": mrn}],
        "name": [{"family": family, "given": ["Avery"]}],
        "gender": "female",
        "birthDate": "1970-03-04",
        "telecom": [{"system": "phone", "value": "555-0100", "use": "home"}],
    }


def observation(patient_id):
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2026-11-20T08:30:00Z",
        "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
    }


def history_checks(client, history, patient_id, versions):
    check(history["type"] == "history", f"{client}: history Bundle type {history['type']}")
    entries = history["entry"]
    check(len(entries) == versions, f"{client}: history has {len(entries)} versions, wanted {versions}")
    got = [e["resource"]["meta"]["versionId"] for e in entries]
    check(got == [str(v) for v in range(versions, 0, -1)], f"{client}: history order {got}")
    for e in entries:
        check(
            e["fullUrl"].startswith(f"{BASE}/Patient/{patient_id}"),
            f"{client}: history fullUrl {e['fullUrl']} is absolute",
        )


# ---------------------------------------------------------------------------------------
# fhirpy (SyncFHIRClient): its resource, searchset and operation APIs.


def run_fhirpy():
    name = "fhirpy"
    fp = SyncFHIRClient(BASE, authorization=f"Bearer {TOKEN}")
    family = f"Pyfhirpy{RUN}"

    ids = []
    for i in range(5):
        p = fp.resource("Patient", **patient(f"PFP-{RUN}-{i}", family))
        p.save()
        valid(p.serialize(), "fhirpy: created Patient")
        check(p.id and p["meta"]["versionId"] == "1", "fhirpy: create answers the resource, version 1")
        check(p["name"][0]["family"] == family, "fhirpy: the created resource keeps its content")
        ids.append(p.id)
    step(name, "create", count=len(ids))

    read = fp.reference("Patient", ids[0]).to_resource()
    valid(read.serialize(), "fhirpy: read Patient")
    check(read["name"][0]["family"] == family, "fhirpy: read returns the name")
    step(name, "read")

    # Search with paging to the last page (the searchset follows the absolute next
    # links): the entries are the total.
    search = fp.resources("Patient").search(family=family).limit(2)
    first = search.search(_total="accurate").fetch_raw()
    valid(first, "fhirpy: searchset")
    total = first["total"]
    check(total == 5, f"fhirpy: total is {total}")
    for link in first["link"]:
        check(link["url"].startswith(f"{BASE}/Patient?"), f"fhirpy: link {link['url']} is absolute")
    seen = [r.id for r in search]
    check(len(seen) == total, f"fhirpy: paged {len(seen)} entries, total {total}")
    check(sorted(seen) == sorted(ids), "fhirpy: every patient once")
    step(name, "search", total=total, entries=len(seen))

    # :contains, through fhirpy's own modifier syntax (family__contains), paged too.
    inner = family[2:7].upper()
    contained = [r.id for r in fp.resources("Patient").search(family__contains=inner).limit(2)]
    check(sorted(contained) == sorted(ids), f"fhirpy: :contains found {len(contained)} of 5")
    check(
        not list(fp.resources("Patient").search(family__contains=f"{inner}x")),
        "fhirpy: a :contains near miss finds nothing",
    )
    try:
        fp.resources("Patient").search(family__contains="Py").fetch()
        fail("fhirpy: a 2-character :contains was answered")
    except OperationOutcome as e:
        check("3 to 40 characters" in str(e), f"fhirpy: a short :contains says why: {e}")
    step(name, ":contains", entries=len(contained))

    # Conditional create, as fhirpy sends it: the search in the create's query string.
    again = fp.resource("Patient", **patient(f"PFP-{RUN}-0", family))
    again.create(identifier=f"urn:custodian:mrn|PFP-{RUN}-0")
    check(again.id == ids[0], "fhirpy: a conditional create with a match answers the existing one")
    fresh = fp.resource("Patient", **patient(f"PFP-{RUN}-5", family))
    fresh.create(identifier=f"urn:custodian:mrn|PFP-{RUN}-5")
    check(fresh.id and fresh.id not in ids, "fhirpy: a conditional create without a match creates")
    found, created = (
        fp.resources("Patient")
        .search(identifier=f"urn:custodian:mrn|PFP-{RUN}-1")
        .get_or_create(fp.resource("Patient", **patient(f"PFP-{RUN}-1", family)))
    )
    check(found.id == ids[1] and not created, "fhirpy: get_or_create finds the existing one")
    try:
        fp.resources("Patient").search(family=family).get_or_create(
            fp.resource("Patient", **patient(f"PFP-{RUN}-7", family))
        )
        fail("fhirpy: a conditional create matching several created one")
    except MultipleResourcesFound:
        pass
    count = fp.resources("Patient").search(family=family, _total="accurate").fetch_raw()["total"]
    check(count == 6, f"fhirpy: {count} patients after the conditional creates, wanted 6")
    step(name, "conditional create")

    # Update without If-Match: fhirpy replaces its copy with the answer, which must be
    # the whole resource.
    p = fp.reference("Patient", ids[0]).to_resource()
    p["telecom"] = [{"system": "phone", "value": "555-0199", "use": "work"}]
    p.save()
    valid(p.serialize(), "fhirpy: updated Patient")
    check(p["meta"]["versionId"] == "2", f"fhirpy: update made version {p['meta']['versionId']}")
    check(p["name"][0]["family"] == family, "fhirpy: the update answer keeps the name")
    check(p["telecom"][0]["value"] == "555-0199", "fhirpy: the update answer has the change")
    # With If-Match: fhirpy has no per-request headers; its documented client option
    # extra_headers sends one on every request of that client.
    stale = SyncFHIRClient(BASE, authorization=f"Bearer {TOKEN}", extra_headers={"If-Match": 'W/"1"'})
    try:
        stale.resource("Patient", **p.serialize()).save()
        fail("fhirpy: an update with a stale If-Match was stored")
    except MultipleResourcesFound:  # fhirpy's name for any 412
        pass
    current = SyncFHIRClient(BASE, authorization=f"Bearer {TOKEN}", extra_headers={"If-Match": 'W/"2"'})
    q = current.resource("Patient", **p.serialize())
    q["address"] = [{"line": ["2 Synthetic Way"], "city": "Testville", "postalCode": "00000"}]
    q.save()
    check(q["meta"]["versionId"] == "3", "fhirpy: an update with the current If-Match is stored")
    step(name, "update")

    # vread and history, through fhirpy's operation API (it has no vread/history calls).
    v1 = valid(fp.execute(f"Patient/{ids[0]}/_history/1", method="get"), "fhirpy: vread")
    check(v1["meta"]["versionId"] == "1", "fhirpy: vread answers version 1")
    check(v1["telecom"][0]["value"] == "555-0100", "fhirpy: vread answers the old content")
    history = valid(fp.execute(f"Patient/{ids[0]}/_history", method="get"), "fhirpy: history")
    history_checks(name, history, ids[0], 3)
    step(name, "history", versions=len(history["entry"]))

    # Patient/$everything, through the reference's operation API, paged.
    obs = fp.resource("Observation", **observation(ids[0]))
    obs.save()
    everything = valid(
        fp.reference("Patient", ids[0]).execute("$everything", method="get", params={"_count": 1}),
        "fhirpy: $everything",
    )
    kinds = [e["resource"]["resourceType"] for e in everything["entry"]]
    pages = 1
    while True:
        nxt = [link["url"] for link in everything.get("link", []) if link["relation"] == "next"]
        if not nxt:
            break
        check(pages < 10, "fhirpy: $everything paging ends")
        everything = valid(fp.execute(nxt[0], method="get"), "fhirpy: $everything page")
        kinds += [e["resource"]["resourceType"] for e in everything["entry"]]
        pages += 1
    check(kinds == ["Patient", "Observation"], f"fhirpy: $everything gave {kinds}")
    step(name, "everything", entries=len(kinds), pages=pages)


# ---------------------------------------------------------------------------------------
# fhirclient (SMART on FHIR, Python): its models and FHIRSearch.


def run_fhirclient():
    name = "fhirclient"
    client = smart.FHIRClient(settings={"app_id": "custodian-interop", "api_base": BASE})
    # The CapabilityStatement (public), parsed by the library's strict models; its
    # rest.security gives the OAuth2 authorization the library sets up.
    client.prepare()
    cs = client.server.capabilityStatement
    check(cs.fhirVersion == "4.0.1", "fhirclient: the CapabilityStatement is R4")
    check(client.server.auth is not None and client.server.auth.auth_type == "oauth2", "fhirclient: SMART security")
    # The SMART authorization itself is the library's browser flow (tested with the JS
    # SMART library in smart_launch.rs); the access token is restored into its state.
    client.server.auth.from_state({"access_token": TOKEN})
    check(client.ready, "fhirclient: ready with a token")
    server = client.server
    step(name, "capabilities")

    family = f"Pysmartfc{RUN}"
    ids = []
    for i in range(5):
        created = Patient(patient(f"PSC-{RUN}-{i}", family)).create(server)
        valid(created, "fhirclient: created Patient")
        check(created["meta"]["versionId"] == "1", "fhirclient: create answers version 1")
        ids.append(created["id"])
    step(name, "create", count=len(ids))

    read = Patient.read(ids[0], server)
    valid(read.as_json(), "fhirclient: read Patient")
    check(read.name[0].family == family, "fhirclient: read returns the name")
    step(name, "read")

    # Search, paged with perform_iter (it follows the absolute next links).
    pages = list(Patient.where({"family": family, "_count": "2", "_total": "accurate"}).perform_iter(server))
    total = pages[0].total
    check(total == 5, f"fhirclient: total is {total}")
    seen = [e.resource.id for b in pages for e in (b.entry or [])]
    for b in pages:
        valid(b.as_json(), "fhirclient: searchset page")
        for e in b.entry or []:
            check(e.fullUrl == f"{BASE}/Patient/{e.resource.id}", f"fhirclient: fullUrl {e.fullUrl}")
    check(len(seen) == total and sorted(seen) == sorted(ids), f"fhirclient: paged {len(seen)} of {total}")
    step(name, "search", total=total, entries=len(seen), pages=len(pages))

    # :contains: FHIRSearch has no $contains operator; the modifier is the parameter name.
    inner = family[2:7].upper()
    contained = [
        e.resource.id
        for b in Patient.where({"family:contains": inner, "_count": "2"}).perform_iter(server)
        for e in (b.entry or [])
    ]
    check(sorted(contained) == sorted(ids), f"fhirclient: :contains found {len(contained)} of 5")
    step(name, ":contains", entries=len(contained))

    # Update (no If-Match: the library sends none and offers no way to add one).
    p = Patient.read(ids[0], server)
    p.gender = "other"
    answer = p.update()
    valid(answer, "fhirclient: updated Patient")
    check(answer["meta"]["versionId"] == "2", "fhirclient: update made version 2")
    check(answer["name"][0]["family"] == family and answer["gender"] == "other", "fhirclient: the update answer")
    step(name, "update")

    # vread and history through read_from (the library's read of any path).
    v1 = Patient.read_from(f"Patient/{ids[0]}/_history/1", server)
    check(v1.meta.versionId == "1" and v1.gender == "female", "fhirclient: vread answers version 1")
    history = Bundle.read_from(f"Patient/{ids[0]}/_history", server)
    history_checks(name, valid(history.as_json(), "fhirclient: history"), ids[0], 2)
    step(name, "history", versions=len(history.entry))

    everything = Bundle.read_from(f"Patient/{ids[0]}/$everything", server)
    valid(everything.as_json(), "fhirclient: $everything")
    kinds = [e.resource.resource_type for e in everything.entry]
    check(kinds == ["Patient"], f"fhirclient: $everything gave {kinds}")
    step(name, "everything", entries=len(kinds))


run_fhirpy()
run_fhirclient()
step("both", "done")
