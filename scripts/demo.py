"""The walk-through that scripts/demo runs against a live kiln server."""
import json
import sys
import time
import urllib.request

URL, ADMIN = sys.argv[1], sys.argv[2]


def call(method, path, key, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(URL + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request) as response:
        text = response.read()
        return json.loads(text) if text else None


call("POST", "/v1/admin/models", ADMIN, {"name": "demo", "description": "no-op model for the walk-through"})
keys = {}
for tier in ["free", "light", "unlimited", "api", "enterprise"]:
    account = call("POST", "/v1/admin/accounts", ADMIN, {"name": f"{tier}-customer", "tier": tier})
    keys[tier] = call("POST", f"/v1/admin/accounts/{account['id']}/keys", ADMIN)["key"]

print("Submitting one generation per tier, oldest first, while no worker is connected:")
ids = {}
for tier in ["free", "light", "unlimited", "api", "enterprise"]:
    generation = call("POST", "/v1/generations", keys[tier], {"model": "demo", "input": {"prompt": f"a {tier} clip"}})
    ids[generation["id"]] = tier
    print(f"  {tier:<10} {generation['id']}  state={generation['state']}")
    time.sleep(0.6)

queue = call("GET", "/v1/admin/queue", ADMIN)
print("\nThe scheduler's order now (urgency = waited / tier's promised wait):")
for entry in queue["next"]:
    print(f"  {entry['tier']:<10} urgency {entry['urgency']:.5f}")

worker_key = call("POST", "/v1/admin/keys", ADMIN, {"scope": "worker"})["key"]
worker = call("POST", "/v1/workers", worker_key, {"cluster": "default", "accelerator": "cpu", "gpus": 0})
print(f"\nWorker {worker['id']} connects and drains the queue:")
while True:
    lease = call("POST", f"/v1/workers/{worker['id']}/lease", worker_key, {"wait_seconds": 0})
    if lease is None:
        break
    job, token = lease["job"], lease["lease"]["token"]
    base = f"/v1/workers/{worker['id']}/jobs/{job['id']}"
    call("POST", f"{base}/start", worker_key, {"token": token})
    call("POST", f"{base}/heartbeat", worker_key, {"token": token, "progress": {"fraction": 0.5, "stage": "working"}})
    call("POST", f"{base}/complete", worker_key, {"token": token, "outputs": []})
    print(f"  leased and completed {ids[job['id']]:<10} (attempt {job['attempt']})")

states = {ids[i]: call("GET", f"/v1/generations/{i}", keys[ids[i]])["state"] for i in ids}
print("\nFinal states:", ", ".join(f"{t}={s}" for t, s in states.items()))
