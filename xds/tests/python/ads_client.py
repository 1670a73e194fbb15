"""An independent ADS client: grpcio + the Envoy protos from xds-protos.

It subscribes to TapPass resource types over
envoy.service.discovery.v3.AggregatedDiscoveryService (state of the world,
then delta), decodes the TapPass messages from the descriptor set built from
xds/proto, verifies every signed snapshot (Ed25519, over the signing input
documented in tappass/v1/envelope.proto), ACKs what verifies and NACKs the
rest with error_detail. It stops once it has ACKed a policy version that
followed a NACK, and prints one JSON summary line per mode.
"""

import argparse
import hashlib
import json
import queue
import struct
import sys
import threading

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.rpc import status_pb2

PREFIX = "type.googleapis.com/"
POLICY = PREFIX + "tappass.v1.PolicySnapshot"
TRUST = PREFIX + "tappass.v1.TrustBundle"
SIGNED_POLICY_JSON = "application/vnd.tappass.signed-policy+json"
TRUST_PAYLOAD = PREFIX + "tappass.v1.TrustBundlePayload"


def load_messages(path):
    fds = descriptor_pb2.FileDescriptorSet.FromString(open(path, "rb").read())
    pool = descriptor_pool.DescriptorPool()
    pending = list(fds.file)
    added = set()
    while pending:
        progress = False
        for f in list(pending):
            if all(d in added for d in f.dependency):
                pool.Add(f)
                added.add(f.name)
                pending.remove(f)
                progress = True
        if not progress:
            raise SystemExit("descriptor set has unresolved imports: %s" % [f.name for f in pending])

    def cls(name):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    return {
        POLICY: cls("tappass.v1.PolicySnapshot"),
        TRUST: cls("tappass.v1.TrustBundle"),
        TRUST_PAYLOAD: cls("tappass.v1.TrustBundlePayload"),
    }


def signing_input(s):
    out = bytearray(b"tappass.v1.SignedSnapshot\n")

    def put_str(x):
        b = x.encode("utf-8")
        out.extend(struct.pack(">I", len(b)))
        out.extend(b)

    put_str(s.payload_type)
    put_str(s.subject)
    out.extend(struct.pack(">Q", s.version))
    if s.HasField("issued_at"):
        out.extend(struct.pack(">qi", s.issued_at.seconds, s.issued_at.nanos))
    else:
        out.extend(struct.pack(">qi", 0, 0))
    if s.HasField("ttl"):
        out.extend(struct.pack(">qi", s.ttl.seconds, s.ttl.nanos))
    else:
        out.extend(struct.pack(">qi", 0, 0))
    put_str(s.key_id)
    put_str(s.alg)
    out.extend(struct.pack(">Q", len(s.payload)))
    out.extend(s.payload)
    return bytes(out)


class Checker:
    def __init__(self, messages, pubkey_hex):
        self.messages = messages
        raw = bytes.fromhex(pubkey_hex)
        self.key = Ed25519PublicKey.from_public_bytes(raw)
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    def check(self, type_url, any_msg, expected_name=None):
        """Returns None when the resource is acceptable, else the reason."""
        if any_msg.type_url != type_url:
            return "resource type %s in a %s response" % (any_msg.type_url, type_url)
        cls = self.messages.get(type_url)
        if cls is None:
            return "unexpected type %s" % type_url
        res = cls.FromString(any_msg.value)
        if expected_name is not None and res.name != expected_name:
            return "resource named %r carries %r" % (expected_name, res.name)
        s = res.snapshot
        if s.alg != "Ed25519":
            return "%s: alg %r" % (res.name, s.alg)
        if s.key_id != self.key_id:
            return "%s: signing key %s is not trusted" % (res.name, s.key_id)
        try:
            self.key.verify(s.signature, signing_input(s))
        except InvalidSignature:
            return "%s: signature does not verify" % res.name
        if s.subject != res.name:
            return "%s: snapshot subject %r" % (res.name, s.subject)
        if type_url == POLICY:
            if s.payload_type != SIGNED_POLICY_JSON:
                return "%s: payload type %r" % (res.name, s.payload_type)
            json.loads(s.payload.decode("utf-8"))
        elif type_url == TRUST:
            if s.payload_type != TRUST_PAYLOAD:
                return "%s: payload type %r" % (res.name, s.payload_type)
            payload = self.messages[TRUST_PAYLOAD].FromString(s.payload)
            json.loads(payload.jwks_json)
        return None


def requests(q):
    while True:
        r = q.get()
        if r is None:
            return
        yield r


def node(node_id):
    return base_pb2.Node(id=node_id, cluster="python", user_agent_name="python-grpcio")


def nack_status(reason):
    return status_pb2.Status(code=3, message=reason)


def run_sotw(channel, checker, node_id, timeout):
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    q = queue.Queue()
    held = {POLICY: "", TRUST: ""}
    summary = {"mode": "sotw", "node": node_id, "acked": [], "nacked": [], "trust_acked": []}
    q.put(discovery_pb2.DiscoveryRequest(node=node(node_id), type_url=POLICY))
    q.put(discovery_pb2.DiscoveryRequest(type_url=TRUST))
    call = stub.StreamAggregatedResources(requests(q), timeout=timeout)
    try:
        for resp in call:
            reason = None
            for any_msg in resp.resources:
                reason = checker.check(resp.type_url, any_msg)
                if reason:
                    break
            if reason is None:
                held[resp.type_url] = resp.version_info
                q.put(discovery_pb2.DiscoveryRequest(
                    version_info=resp.version_info, type_url=resp.type_url,
                    response_nonce=resp.nonce))
                key = "acked" if resp.type_url == POLICY else "trust_acked"
                summary[key].append(resp.version_info)
            else:
                q.put(discovery_pb2.DiscoveryRequest(
                    version_info=held[resp.type_url], type_url=resp.type_url,
                    response_nonce=resp.nonce, error_detail=nack_status(reason)))
                summary["nacked"].append(resp.version_info)
                summary["nack_reason"] = reason
            if summary["nacked"] and len(summary["acked"]) >= 2 and summary["trust_acked"]:
                break
        # Half-close after the last ACK and let the server end the stream,
        # so that the ACK is delivered before the call ends.
        q.put(None)
        for _ in call:
            pass
    finally:
        q.put(None)
        call.cancel()
    return summary


def run_delta(channel, checker, node_id, timeout):
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    q = queue.Queue()
    summary = {"mode": "delta", "node": node_id, "acked": [], "nacked": [], "trust_acked": [],
               "resources": {}}
    q.put(discovery_pb2.DeltaDiscoveryRequest(node=node(node_id), type_url=POLICY))
    q.put(discovery_pb2.DeltaDiscoveryRequest(type_url=TRUST))
    call = stub.DeltaAggregatedResources(requests(q), timeout=timeout)
    try:
        for resp in call:
            reason = None
            for r in resp.resources:
                reason = checker.check(resp.type_url, r.resource, expected_name=r.name)
                if reason:
                    break
            if reason is None:
                q.put(discovery_pb2.DeltaDiscoveryRequest(
                    type_url=resp.type_url, response_nonce=resp.nonce))
                key = "acked" if resp.type_url == POLICY else "trust_acked"
                summary[key].append(resp.system_version_info)
                if resp.type_url == POLICY:
                    for r in resp.resources:
                        summary["resources"][r.name] = r.version
                    for n in resp.removed_resources:
                        summary["resources"].pop(n, None)
            else:
                q.put(discovery_pb2.DeltaDiscoveryRequest(
                    type_url=resp.type_url, response_nonce=resp.nonce,
                    error_detail=nack_status(reason)))
                summary["nacked"].append(resp.system_version_info)
                summary["nack_reason"] = reason
            if summary["nacked"] and len(summary["acked"]) >= 2 and summary["trust_acked"]:
                break
        # Half-close after the last ACK and let the server end the stream,
        # so that the ACK is delivered before the call ends.
        q.put(None)
        for _ in call:
            pass
    finally:
        q.put(None)
        call.cancel()
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--descriptors", required=True)
    ap.add_argument("--pubkey", required=True, help="hex of the 32-byte Ed25519 public key")
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()
    checker = Checker(load_messages(args.descriptors), args.pubkey)
    channel = grpc.insecure_channel(args.addr)
    grpc.channel_ready_future(channel).result(timeout=args.timeout)
    results = {}

    def go(name, fn, node_id):
        try:
            results[name] = fn(channel, checker, node_id, args.timeout)
        except Exception as e:  # reported below
            results[name] = {"mode": name, "error": repr(e)}

    threads = [
        threading.Thread(target=go, args=("sotw", run_sotw, "py-sotw")),
        threading.Thread(target=go, args=("delta", run_delta, "py-delta")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = True
    for name in ("sotw", "delta"):
        print(json.dumps(results[name], sort_keys=True))
        ok = ok and "error" not in results[name]
    channel.close()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
