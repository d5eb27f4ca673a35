"""End-to-end tests of terad driven by a client no one here wrote: Python's grpcio.

The stubs are generated when the script starts, from server/proto by grpcio-tools
(`python3 -m grpc_tools.protoc -I server/proto --python_out --grpc_python_out`), into a
temporary directory that is removed at exit; they are never committed. Health uses the stubs
of grpcio-health-checking and reflection the client of grpcio-reflection, so those two are
checked against code that was not generated from our protos at all.

server/tests/python_e2e.rs starts terad as real processes and runs the phases:

  functional  a unittest suite against two servers: `--server` (defaults; a second user,
              bob and carol, were added to it) and `--limits-server` (max_concurrent_requests=1,
              max_watches=1, token_ttl_secs=3, changelog_mib=1). It covers Auth.Token and
              Ping, every Metadata RPC, every error code with its message, health, reflection
              (v1alpha through grpcio-reflection's client, v1 through generated stubs),
              namespaces, refused tokens and oversized messages and fields.
  load        8 threads commit uploads and create folders as fast as they can and append
              every acknowledged write (path, kind, size, etag, checksum) to `--acks`; before
              each call they append the attempt. The harness writes `draining` on stdin
              before it sends terad SIGTERM; the script answers `load: drain noted`. Errors
              before that fail the phase; after it, each thread stops at its first error.
  verify      against the restarted terad: every acknowledged write is there as it was
              acknowledged (a file's size, etag and checksum; a folder's kind) or as a later
              attempt on the same path whose outcome the client never learnt left it, and
              nothing is listed under /load that was never attempted.

By hand, with two terads running (the second with the limits above, e.g. `terad --data-dir
DIR --listen 127.0.0.1:7430 --metrics-listen off --set max_concurrent_requests=1 ...`) and
bob and carol added to the first (`TERAD_NEW_PASSWORD=PW terad user add bob`, the same for
carol), from the workspace:

  python3 tests/python/e2e.py functional --server 127.0.0.1:7420 \\
      --password-file terad-data/admin-password --bob-password PW --carol-password PW \\
      --limits-server 127.0.0.1:7430 --limits-password-file DIR/admin-password
"""

import argparse
import base64
import collections
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    import grpc_tools  # noqa: F401  (the generator, run below as python3 -m grpc_tools.protoc)
except ImportError as e:
    print(
        f"e2e.py: {e}: the Python gRPC packages are missing; run `make pydeps` "
        "(it installs the pinned grpcio, grpcio-tools, grpcio-reflection, "
        "grpcio-health-checking and protobuf)",
        file=sys.stderr,
    )
    sys.exit(3)

# Set by main(): the generated modules and the servers under test.
meta_pb2 = meta_grpc = auth_pb2 = auth_grpc = refl_v1_pb2 = refl_v1_grpc = None
ARGS = None
CALL_TIMEOUT = 10.0
StatusCode = grpc.StatusCode


def generate_stubs(proto_dir, out):
    """Compile every .proto under proto_dir into out and import the ones the tests use."""
    global meta_pb2, meta_grpc, auth_pb2, auth_grpc, refl_v1_pb2, refl_v1_grpc
    protos = sorted(glob.glob(os.path.join(proto_dir, "**", "*.proto"), recursive=True))
    if not protos:
        sys.exit(f"e2e.py: no .proto files under {proto_dir}")
    # Only -I proto_dir: the protos must compile without anything from outside the folder.
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}",
           f"--python_out={out}", f"--grpc_python_out={out}",
           *[os.path.relpath(p, proto_dir) for p in protos]]
    r = subprocess.run(cmd, cwd=proto_dir, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"e2e.py: grpc_tools.protoc failed ({r.returncode}):\n{r.stderr}")
    sys.path.insert(0, out)
    # grpc/reflection/v1 is generated as the package grpc.reflection.v1, but grpcio aliases
    # grpc.reflection to the installed grpc_reflection (which has only v1alpha): let that
    # package find the generated v1 too.
    sys.modules["grpc.reflection"].__path__.append(os.path.join(out, "grpc", "reflection"))
    # The generated grpc.health.v1 and grpc.reflection.v1alpha are not imported: the
    # packages of grpcio-health-checking and grpcio-reflection define the same messages.
    from tera.meta.v1 import meta_pb2 as m, meta_pb2_grpc as mg
    from tera.auth.v1 import auth_pb2 as a, auth_pb2_grpc as ag
    from grpc.reflection.v1 import reflection_pb2 as r1, reflection_pb2_grpc as r1g
    meta_pb2, meta_grpc, auth_pb2, auth_grpc, refl_v1_pb2, refl_v1_grpc = m, mg, a, ag, r1, r1g
    return len(protos)


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


class Server:
    """Stubs on one channel to one terad."""

    def __init__(self, addr):
        self.addr = addr
        self.channel = grpc.insecure_channel(addr)
        self.meta = meta_grpc.MetadataStub(self.channel)
        self.auth = auth_grpc.AuthStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def wait_serving(self, seconds=30):
        """Health says SERVING once the database is open (the port is bound before)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                r = self.health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"terad at {self.addr} never became SERVING in {seconds} s")
            time.sleep(0.05)

    def token(self, user, password, ttl=3600):
        return self.auth.Token(
            auth_pb2.TokenRequest(user=user, password=password, ttl_seconds=ttl),
            timeout=CALL_TIMEOUT)


class User:
    """Metadata calls as one user: every call carries the token and a deadline."""

    def __init__(self, server, token):
        self.server, self.token, self.md = server, token, bearer(token)

    def __getattr__(self, rpc):
        method = getattr(self.server.meta, rpc)
        return lambda req, **kw: method(
            req, metadata=kw.pop("metadata", self.md), timeout=kw.pop("timeout", CALL_TIMEOUT),
            **kw)

    def stat(self, path, ns=0):
        return self.Stat(meta_pb2.StatRequest(namespace=ns, path=path))

    def mkdir(self, path, parents=False, ns=0):
        return self.CreateFolder(meta_pb2.CreateFolderRequest(
            namespace=ns, path=path, parents=parents))

    def put(self, path, size=1, **kw):
        return self.CommitUpload(meta_pb2.CommitUploadRequest(path=path, size=size, **kw))

    def revision(self):
        return self.GetUsage(meta_pb2.GetUsageRequest()).revision

    def list_all(self, path, page_size=0, ns=0):
        entries, token, pages = [], "", 0
        while True:
            r = self.List(meta_pb2.ListRequest(
                namespace=ns, path=path, page_size=page_size, page_token=token))
            entries.extend(r.entries)
            pages += 1
            token = r.next_page_token
            if not token:
                return entries, pages


def read_password(path):
    with open(path) as f:
        return f.read().strip()


# ---------------------------------------------------------------- functional phase


class Base(unittest.TestCase):
    """Shared set-up: tokens for the admin and two users, bob and carol, on the main server."""

    main = limits = None
    admin = bob = carol = None

    @classmethod
    def setUpClass(cls):
        if Base.main is None:
            Base.main = Server(ARGS.server)
            Base.main.wait_serving()
            Base.limits = Server(ARGS.limits_server)
            Base.limits.wait_serving()
            t = Base.main.token("admin", read_password(ARGS.password_file))
            Base.admin = User(Base.main, t.token)
            Base.admin_ns = t.namespace
            t = Base.main.token("bob", ARGS.bob_password)
            Base.bob = User(Base.main, t.token)
            Base.bob_ns = t.namespace
            t = Base.main.token("carol", ARGS.carol_password)
            Base.carol = User(Base.main, t.token)
            Base.carol_ns = t.namespace
            # A folder per run, so that the suite can run again against the same server.
            Base.top = f"/t/{uuid.uuid4().hex[:8]}"
            Base.admin.mkdir(Base.top, parents=True)

    def folder(self):
        """A fresh folder for one test: /t/<run>/<test name>."""
        path = f"{self.top}/{self._testMethodName}"
        self.admin.mkdir(path)
        return path

    def fails(self, code, fn, *args, **kw):
        """Call fn, expect an RpcError with this code and a non-empty message; return it."""
        with self.assertRaises(grpc.RpcError) as cm:
            fn(*args, **kw)
        e = cm.exception
        self.assertEqual(e.code(), code, f"want {code}, got {e.code()}: {e.details()}")
        self.assertTrue(e.details(), f"{code} without a message")
        return e

    def assertMentions(self, err, *words):
        for w in words:
            self.assertIn(w, err.details(), f"the message should name {w!r}")


class AuthTests(Base):
    def test_token_refuses_a_wrong_password_or_unknown_user_alike(self):
        req = auth_pb2.TokenRequest(user="admin", password="wrong")
        e = self.fails(StatusCode.UNAUTHENTICATED, self.main.auth.Token, req, timeout=CALL_TIMEOUT)
        req = auth_pb2.TokenRequest(user="nobody", password="wrong")
        e2 = self.fails(StatusCode.UNAUTHENTICATED, self.main.auth.Token, req, timeout=CALL_TIMEOUT)
        self.assertEqual(e.details(), e2.details(), "a wrong password and an unknown user look alike")

    def test_token_and_ping(self):
        before = int(time.time())
        t = self.main.token("admin", read_password(ARGS.password_file), ttl=120)
        self.assertTrue(t.token.startswith("tera1."), t.token)
        self.assertEqual(t.role, auth_pb2.ROLE_ADMIN)
        self.assertEqual(t.namespace, 1)
        self.assertTrue(before + 120 <= t.expires_at <= int(time.time()) + 120, t.expires_at)
        p = self.main.auth.Ping(auth_pb2.PingRequest(), metadata=bearer(t.token), timeout=CALL_TIMEOUT)
        self.assertEqual((p.user, p.namespace, p.role, p.expires_at),
                         ("admin", 1, auth_pb2.ROLE_ADMIN, t.expires_at))
        self.assertTrue(p.version)
        p = self.main.auth.Ping(auth_pb2.PingRequest(), metadata=self.bob.md, timeout=CALL_TIMEOUT)
        self.assertEqual((p.user, p.namespace, p.role), ("bob", self.bob_ns, auth_pb2.ROLE_USER))
        self.assertNotEqual(self.bob_ns, self.admin_ns)

    def test_a_missing_token_is_refused(self):
        e = self.fails(StatusCode.UNAUTHENTICATED, self.main.auth.Ping, auth_pb2.PingRequest(),
                       timeout=CALL_TIMEOUT)
        self.assertMentions(e, "no token", "authorization")
        e = self.fails(StatusCode.UNAUTHENTICATED, self.main.meta.Stat,
                       meta_pb2.StatRequest(path="/"), timeout=CALL_TIMEOUT)
        self.assertMentions(e, "Bearer")
        e = self.fails(StatusCode.UNAUTHENTICATED, self.main.meta.Stat,
                       meta_pb2.StatRequest(path="/"), metadata=(("authorization", "Basic YWRtaW4="),),
                       timeout=CALL_TIMEOUT)
        self.assertMentions(e, "Bearer <token>")

    def test_a_bad_token_is_refused(self):
        prefix, payload, sig = self.bob.token.split(".")
        # One character of the signature changed (not the last, whose low bits are padding).
        flipped = ("B" if sig[5] == "A" else "A")
        bad_sig = ".".join([prefix, payload, sig[:5] + flipped + sig[6:]])
        # The claims edited to make bob an admin of namespace 1, with bob's signature.
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        self.assertEqual(claims["sub"], "bob")
        claims.update(role="admin", ns=1)
        forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        forged = ".".join([prefix, forged_payload, sig])
        for token in (bad_sig, forged):
            for rpc, req in ((self.main.meta.Stat, meta_pb2.StatRequest(path="/")),
                             (self.main.auth.Ping, auth_pb2.PingRequest())):
                e = self.fails(StatusCode.UNAUTHENTICATED, rpc, req, metadata=bearer(token),
                               timeout=CALL_TIMEOUT)
                self.assertMentions(e, "signature does not verify", "Auth/Token")
        e = self.fails(StatusCode.UNAUTHENTICATED, self.main.auth.Ping, auth_pb2.PingRequest(),
                       metadata=bearer("garbage"), timeout=CALL_TIMEOUT)
        self.assertMentions(e, "malformed token")

    def test_a_user_reaches_only_its_own_namespace(self):
        bob, carol, admin = self.bob, self.carol, self.admin
        self.assertEqual(len({self.admin_ns, self.bob_ns, self.carol_ns}), 3)
        mine = "/mine-" + self.top.rsplit("/", 1)[1]
        bob.mkdir(mine)
        carol.mkdir(mine)
        self.assertEqual(bob.stat(mine, ns=self.bob_ns).name, mine[1:])
        # bob's token on carol's namespace (and on the admin's): every RPC refuses it.
        for ns in (self.carol_ns, self.admin_ns):
            e = self.fails(StatusCode.PERMISSION_DENIED, bob.stat, mine, ns=ns)
            self.assertMentions(e, '"bob"', f"namespace {self.bob_ns}", f"not {ns}", "pass 0")
            self.fails(StatusCode.PERMISSION_DENIED, bob.mkdir, mine + "/intruder", ns=ns)
            self.fails(StatusCode.PERMISSION_DENIED, bob.put, mine + "/intruder", namespace=ns)
            self.fails(StatusCode.PERMISSION_DENIED, bob.Move,
                       meta_pb2.MoveRequest(namespace=ns, from_path=mine, to_path="/stolen"))
            self.fails(StatusCode.PERMISSION_DENIED, bob.Delete,
                       meta_pb2.DeleteRequest(namespace=ns, path=mine, recursive=True))
            self.fails(StatusCode.PERMISSION_DENIED, bob.SetAttributes,
                       meta_pb2.SetAttributesRequest(namespace=ns, path=mine, set={"a": "b"}))
            self.fails(StatusCode.PERMISSION_DENIED, bob.List, meta_pb2.ListRequest(namespace=ns, path="/"))
            self.fails(StatusCode.PERMISSION_DENIED, bob.GetUsage, meta_pb2.GetUsageRequest(namespace=ns))
            self.fails(StatusCode.PERMISSION_DENIED, bob.Changes, meta_pb2.ChangesRequest(namespace=ns))
            stream = bob.WatchChanges(meta_pb2.WatchChangesRequest(namespace=ns))
            self.fails(StatusCode.PERMISSION_DENIED, next, stream)
        e = self.fails(StatusCode.PERMISSION_DENIED, carol.stat, mine, ns=self.bob_ns)
        self.assertMentions(e, '"carol"')
        # Nothing of bob's reached carol's namespace; each sees its own / under namespace 0.
        self.assertEqual([e.name for e in carol.list_all(mine)[0]], [])
        self.fails(StatusCode.NOT_FOUND, bob.stat, "/t")
        # The admin reaches every namespace.
        self.assertIn(mine[1:], [e.name for e in admin.list_all("/", ns=self.bob_ns)[0]])
        self.assertEqual(admin.stat(mine, ns=self.carol_ns).name, mine[1:])


class MetadataTests(Base):
    def test_stat_by_path_and_by_id(self):
        d = self.folder()
        folder = self.admin.stat(d)
        self.assertEqual((folder.kind, folder.name), (meta_pb2.KIND_FOLDER, "test_stat_by_path_and_by_id"))
        f = self.admin.put(d + "/a.pdf", size=42, mtime_us=1_700_000_000_000_000,
                           checksum=meta_pb2.Checksum(algorithm="sha256", value="00ff"),
                           mime="application/pdf")
        by_path = self.admin.stat(d + "/a.pdf")
        by_id = self.admin.Stat(meta_pb2.StatRequest(id=f.id))
        self.assertEqual(by_path, by_id)
        self.assertEqual(by_path, f)
        self.assertEqual((f.kind, f.size, f.mtime_us, f.mime, f.checksum.algorithm, f.checksum.value,
                          f.parent_id, f.tree_size),
                         (meta_pb2.KIND_FILE, 42, 1_700_000_000_000_000, "application/pdf", "sha256",
                          "00ff", folder.id, 42))
        root = self.admin.stat("/")
        self.assertEqual((root.kind, root.name, root.parent_id), (meta_pb2.KIND_FOLDER, "", 0))
        self.assertEqual(self.admin.Stat(meta_pb2.StatRequest(id=root.id)).kind, meta_pb2.KIND_FOLDER)
        e = self.fails(StatusCode.NOT_FOUND, self.admin.stat, d + "/missing.pdf")
        self.assertMentions(e, "missing.pdf")
        e = self.fails(StatusCode.NOT_FOUND, self.admin.Stat, meta_pb2.StatRequest(id=1 << 60))
        self.assertMentions(e, str(1 << 60))
        e = self.fails(StatusCode.INVALID_ARGUMENT, self.admin.Stat, meta_pb2.StatRequest())
        self.assertMentions(e, "path or id")

    def test_list_pages_in_name_order(self):
        d = self.folder()
        names = [f"f{i:02}" for i in range(23)] + ["sub1", "sub2"]
        for n in names:
            if n.startswith("sub"):
                self.admin.mkdir(f"{d}/{n}")
            else:
                self.admin.put(f"{d}/{n}", size=len(n))
        for page_size in (10, 1, 25, 0):
            entries, pages = self.admin.list_all(d, page_size=page_size)
            self.assertEqual([e.name for e in entries], sorted(names), f"page_size {page_size}")
            want_pages = -(-len(names) // page_size) if page_size else 1
            # A last page that happens to be full may be followed by an empty one.
            self.assertIn(pages, (want_pages, want_pages + 1), f"page_size {page_size}")
        r = self.admin.List(meta_pb2.ListRequest(path=d, page_size=10))
        self.assertEqual(len(r.entries), 10)
        self.assertTrue(r.next_page_token)
        r2 = self.admin.List(meta_pb2.ListRequest(path=d, page_size=10, page_token=r.next_page_token))
        self.assertEqual(r2.entries[0].name, names[10])
        kinds = {e.name: e.kind for e in self.admin.list_all(d)[0]}
        self.assertEqual(kinds["sub1"], meta_pb2.KIND_FOLDER)
        self.assertEqual(kinds["f00"], meta_pb2.KIND_FILE)
        self.assertEqual(self.admin.list_all(d + "/sub1")[0], [])
        e = self.fails(StatusCode.INVALID_ARGUMENT, self.admin.List,
                       meta_pb2.ListRequest(path=d, page_size=10001))
        self.assertMentions(e, "page_size 10001", "next_page_token")
        e = self.fails(StatusCode.INVALID_ARGUMENT, self.admin.List,
                       meta_pb2.ListRequest(path=d, page_token="!!not-a-token!!"))
        self.assertMentions(e, "page_token")
        e = self.fails(StatusCode.FAILED_PRECONDITION, self.admin.List, meta_pb2.ListRequest(path=d + "/f00"))
        self.assertMentions(e, "f00", "not a folder")
        e = self.fails(StatusCode.NOT_FOUND, self.admin.List, meta_pb2.ListRequest(path=d + "/nope"))
        self.assertMentions(e, "nope")

    def test_create_folder_with_and_without_parents(self):
        d = self.folder()
        e = self.fails(StatusCode.NOT_FOUND, self.admin.mkdir, d + "/a/b/c")
        self.assertTrue(e.details())
        c = self.admin.mkdir(d + "/a/b/c", parents=True)
        self.assertEqual((c.kind, c.name), (meta_pb2.KIND_FOLDER, "c"))
        b = self.admin.stat(d + "/a/b")
        self.assertEqual(c.parent_id, b.id)
        again = self.admin.mkdir(d + "/a/b/c", parents=True)
        self.assertEqual(again.id, c.id, "parents: an existing folder is success, the same folder")
        e = self.fails(StatusCode.ALREADY_EXISTS, self.admin.mkdir, d + "/a/b/c")
        self.assertMentions(e, "/a/b/c", "choose another name")
        self.admin.put(d + "/file")
        e = self.fails(StatusCode.ALREADY_EXISTS, self.admin.mkdir, d + "/file")
        e = self.fails(StatusCode.FAILED_PRECONDITION, self.admin.mkdir, d + "/file/sub", parents=True)
        self.assertMentions(e, "file", "a file is where a folder is needed")

    def test_move_renames_and_moves_with_if_match(self):
        d = self.folder()
        f = self.admin.put(d + "/a.txt", size=5)
        renamed = self.admin.Move(meta_pb2.MoveRequest(from_path=d + "/a.txt", to_path=d + "/b.txt"))
        self.assertEqual((renamed.id, renamed.name, renamed.size, renamed.parent_id),
                         (f.id, "b.txt", 5, f.parent_id))
        self.fails(StatusCode.NOT_FOUND, self.admin.stat, d + "/a.txt")
        # A folder moves with what is below it; ids stay.
        self.admin.mkdir(d + "/src/deep", parents=True)
        inner = self.admin.put(d + "/src/deep/x", size=7)
        src = self.admin.stat(d + "/src")
        self.admin.mkdir(d + "/dst")
        moved = self.admin.Move(meta_pb2.MoveRequest(from_path=d + "/src", to_path=d + "/dst/src2"))
        self.assertEqual((moved.id, moved.name, moved.tree_size), (src.id, "src2", 7))
        self.assertEqual(self.admin.stat(d + "/dst/src2/deep/x").id, inner.id)
        # if_match: a stale etag is refused, the current one moves.
        stale = renamed.etag
        self.admin.put(d + "/b.txt", size=6)
        e = self.fails(StatusCode.FAILED_PRECONDITION, self.admin.Move,
                       meta_pb2.MoveRequest(from_path=d + "/b.txt", to_path=d + "/c.txt", if_match=stale))
        self.assertMentions(e, "b.txt", f"not {stale}", "stat it again")
        current = self.admin.stat(d + "/b.txt").etag
        c = self.admin.Move(meta_pb2.MoveRequest(from_path=d + "/b.txt", to_path=d + "/c.txt",
                                                 if_match=current))
        self.assertEqual((c.id, c.size), (f.id, 6))
        # Onto an existing entry, from a missing one, into itself, the root.
        self.admin.put(d + "/d.txt")
        e = self.fails(StatusCode.ALREADY_EXISTS, self.admin.Move,
                       meta_pb2.MoveRequest(from_path=d + "/c.txt", to_path=d + "/d.txt"))
        self.assertMentions(e, "d.txt")
        e = self.fails(StatusCode.NOT_FOUND, self.admin.Move,
                       meta_pb2.MoveRequest(from_path=d + "/nope", to_path=d + "/nope2"))
        self.assertMentions(e, "nope")
        e = self.fails(StatusCode.INVALID_ARGUMENT, self.admin.Move,
                       meta_pb2.MoveRequest(from_path=d + "/dst", to_path=d + "/dst/inside"))
        self.assertMentions(e, "into itself")
        e = self.fails(StatusCode.INVALID_ARGUMENT, self.admin.Move,
                       meta_pb2.MoveRequest(from_path="/", to_path="/x"))
        self.assertMentions(e, "root")

    def test_delete_file_empty_folder_and_recursive(self):
        d = self.folder()
        self.admin.put(d + "/f")
        self.admin.Delete(meta_pb2.DeleteRequest(path=d + "/f"))
        self.fails(StatusCode.NOT_FOUND, self.admin.stat, d + "/f")
        self.admin.mkdir(d + "/empty")
        self.admin.Delete(meta_pb2.DeleteRequest(path=d + "/empty"))
        self.fails(StatusCode.NOT_FOUND, self.admin.stat, d + "/empty")
        self.admin.mkdir(d + "/full/sub", parents=True)
        self.admin.put(d + "/full/sub/x", size=3)
        e = self.fails(StatusCode.FAILED_PRECONDITION, self.admin.Delete,
                       meta_pb2.DeleteRequest(path=d + "/full"))
        self.assertMentions(e, "full", "not empty", "recursively")
        before = self.admin.GetUsage(meta_pb2.GetUsageRequest()).bytes
        self.admin.Delete(meta_pb2.DeleteRequest(path=d + "/full", recursive=True))
        self.fails(StatusCode.NOT_FOUND, self.admin.stat, d + "/full/sub/x")
        self.fails(StatusCode.NOT_FOUND, self.admin.stat, d + "/full")
        self.assertEqual(self.admin.GetUsage(meta_pb2.GetUsageRequest()).bytes, before - 3)
        # if_match on delete.
        g = self.admin.put(d + "/g")
        self.admin.put(d + "/g", size=2)
        e = self.fails(StatusCode.FAILED_PRECONDITION, self.admin.Delete,
                       meta_pb2.DeleteRequest(path=d + "/g", if_match=g.etag))
        self.assertMentions(e, "stat it again")
        self.admin.Delete(meta_pb2.DeleteRequest(path=d + "/g", if_match=self.admin.stat(d + "/g").etag))
        e = self.fails(StatusCode.NOT_FOUND, self.admin.Delete, meta_pb2.DeleteRequest(path=d + "/g"))
        self.assertMentions(e, "g")
        e = self.fails(StatusCode.INVALID_ARGUMENT, self.admin.Delete,
                       meta_pb2.DeleteRequest(path="/", recursive=True))
        self.assertMentions(e, "root")

    def test_commit_upload_creates_overwrites_and_checks_etags(self):
        d = self.folder()
        usage0 = self.admin.GetUsage(meta_pb2.GetUsageRequest()).bytes
        a = self.admin.put(d + "/a", size=10, if_none_match=True,
                           checksum=meta_pb2.Checksum(algorithm="sha256", value="aa"))
        self.assertEqual((a.size, a.kind, a.checksum.value), (10, meta_pb2.KIND_FILE, "aa"))
        self.assertTrue(a.etag)
        self.assertGreater(a.mtime_us, 0, "mtime_us 0 means now")
        e = self.fails(StatusCode.FAILED_PRECONDITION, self.admin.put, d + "/a", size=11, if_none_match=True)
        self.assertMentions(e, "/a")
        b = self.admin.put(d + "/a", size=20)
        self.assertEqual(b.id, a.id, "an overwrite keeps the id")
        self.assertNotEqual(b.etag, a.etag)
        e = self.fails(StatusCode.FAILED_PRECONDITION, self.admin.put, d + "/a", size=30, if_match=a.etag)
        self.assertMentions(e, "/a", f"has etag {b.etag}, not {a.etag}", "stat it again")
        c = self.admin.put(d + "/a", size=30, if_match=b.etag)
        self.assertEqual(c.size, 30)
        self.assertNotIn(c.etag, (a.etag, b.etag))
        e = self.fails(StatusCode.FAILED_PRECONDITION, self.admin.put, d + "/new", if_match=c.etag)
        self.assertEqual(self.admin.stat(d).tree_size, 30)
        self.assertEqual(self.admin.GetUsage(meta_pb2.GetUsageRequest()).bytes, usage0 + 30)
        e = self.fails(StatusCode.NOT_FOUND, self.admin.put, d + "/no/such/parent")
        self.admin.mkdir(d + "/folder")
        e = self.fails(StatusCode.FAILED_PRECONDITION, self.admin.put, d + "/folder")
        self.assertMentions(e, "folder", "a folder is where a file is needed")
        e = self.fails(StatusCode.FAILED_PRECONDITION, self.admin.put, d + "/a/under-a-file")
        self.assertMentions(e, "a file is where a folder is needed")

    def test_set_attributes_sets_and_unsets(self):
        d = self.folder()
        f = self.admin.put(d + "/f")
        r = self.admin.SetAttributes(meta_pb2.SetAttributesRequest(
            path=d + "/f", set={"color": "red", "n": "1", "ü": "ok"}))
        self.assertEqual(dict(r.attributes), {"color": "red", "n": "1", "ü": "ok"})
        self.assertNotEqual(r.etag, f.etag)
        r = self.admin.SetAttributes(meta_pb2.SetAttributesRequest(
            path=d + "/f", set={"color": "blue"}, unset=["n", "never-set"]))
        self.assertEqual(dict(r.attributes), {"color": "blue", "ü": "ok"})
        self.assertEqual(dict(self.admin.stat(d + "/f").attributes), {"color": "blue", "ü": "ok"})
        r = self.admin.SetAttributes(meta_pb2.SetAttributesRequest(path=d, set={"on": "folder"}))
        self.assertEqual(dict(r.attributes), {"on": "folder"})
        e = self.fails(StatusCode.NOT_FOUND, self.admin.SetAttributes,
                       meta_pb2.SetAttributesRequest(path=d + "/nope", set={"a": "b"}))

    def test_changes_follow_a_cursor_a_page_at_a_time(self):
        d = self.folder()
        r0 = self.admin.revision()
        self.admin.mkdir(d + "/c")
        files = [self.admin.put(f"{d}/c/f{i}", size=i) for i in range(4)]
        self.admin.Delete(meta_pb2.DeleteRequest(path=f"{d}/c/f0"))
        r1 = self.admin.revision()
        self.assertGreaterEqual(r1, r0 + 6)
        cursor, seen, deleted, pages = r0, [], [], 0
        while cursor < r1:
            page = self.admin.Changes(meta_pb2.ChangesRequest(cursor=cursor, max_revisions=2))
            revs = sorted({c.revision for c in page.changes})
            self.assertLessEqual(len(revs), 2)
            self.assertTrue(all(cursor < r <= page.cursor for r in revs), (cursor, revs, page.cursor))
            self.assertGreater(page.cursor, cursor)
            for c in page.changes:
                if c.WhichOneof("change") == "upsert":
                    seen.append(c.upsert.name)
                else:
                    deleted.append(c.deleted_id)
            cursor, pages = page.cursor, pages + 1
        self.assertEqual(cursor, r1)
        self.assertGreaterEqual(pages, 3)
        for n in ("c", "f0", "f1", "f2", "f3"):
            self.assertIn(n, seen)
        self.assertEqual(deleted, [files[0].id])
        # Nothing after the last cursor; a wait returns once a change comes.
        empty = self.admin.Changes(meta_pb2.ChangesRequest(cursor=r1))
        self.assertEqual((list(empty.changes), empty.cursor), ([], r1))
        waiting = self.admin.server.meta.Changes.future(
            meta_pb2.ChangesRequest(cursor=r1, wait_ms=20000), metadata=self.admin.md, timeout=30)
        self.admin.put(f"{d}/c/late", size=1)
        page = waiting.result()
        self.assertIn("late", [c.upsert.name for c in page.changes if c.HasField("upsert")])
        e = self.fails(StatusCode.INVALID_ARGUMENT, self.admin.Changes,
                       meta_pb2.ChangesRequest(cursor=r1, wait_ms=60001))
        self.assertMentions(e, "wait_ms 60001")

    def test_watch_changes_streams_a_change_as_it_happens(self):
        d = self.folder()
        stream = self.admin.WatchChanges(
            meta_pb2.WatchChangesRequest(cursor=self.admin.revision()), timeout=30)
        stream.initial_metadata()  # the stream is open on the server
        made = self.admin.mkdir(d + "/watched")
        got = []
        while made.id not in got:
            page = next(stream)
            self.assertTrue(page.changes)
            got += [c.upsert.id for c in page.changes if c.HasField("upsert")]
        self.admin.put(d + "/watched/f", size=3)
        names = []
        while "f" not in names:
            names += [c.upsert.name for c in next(stream).changes if c.HasField("upsert")]
        stream.cancel()
        self.fails(StatusCode.CANCELLED, next, stream)

    def test_get_usage_counts_bytes_and_revisions(self):
        d = self.folder()
        u0 = self.admin.GetUsage(meta_pb2.GetUsageRequest())
        self.admin.put(d + "/a", size=1000)
        self.admin.put(d + "/b", size=24)
        u1 = self.admin.GetUsage(meta_pb2.GetUsageRequest())
        self.assertEqual(u1.bytes, u0.bytes + 1024)
        self.assertGreaterEqual(u1.revision, u0.revision + 2)
        self.assertEqual(self.admin.stat("/").tree_size, u1.bytes)
        ub = self.bob.GetUsage(meta_pb2.GetUsageRequest())
        self.assertEqual(self.bob.stat("/").tree_size, ub.bytes)


class ErrorTests(Base):
    def test_bad_paths_are_invalid_arguments_that_say_why(self):
        d = self.folder()
        cases = {
            "relative/path": "not absolute",
            "": "not absolute",
            "/a/../b": ". or .. component",
            "/a/./b": ". or .. component",
            "/a//b": "empty component",
            "/a\x00b": "NUL",
            "/" + "n" * 256: "longer than 255 bytes",
        }
        for path, reason in cases.items():
            for call in (lambda: self.admin.stat(path), lambda: self.admin.mkdir(path),
                         lambda: self.admin.put(path),
                         lambda: self.admin.Move(meta_pb2.MoveRequest(from_path=d, to_path=path))):
                e = self.fails(StatusCode.INVALID_ARGUMENT, call)
                self.assertMentions(e, "invalid path", reason)
        # Past 4096 bytes no new entry is made; an existing one (moved there) is still
        # reached, so a lookup of a long path is answered by what is there.
        deep = "/" + "a/" * 2100
        for call in (lambda: self.admin.mkdir(deep),
                     lambda: self.admin.Move(meta_pb2.MoveRequest(from_path=d, to_path=deep))):
            e = self.fails(StatusCode.INVALID_ARGUMENT, call)
            self.assertMentions(e, "invalid path", "longer than 4096 bytes")
        self.fails(StatusCode.NOT_FOUND, lambda: self.admin.stat(deep))
        # The limits themselves are fine: a 255-byte name, and a name in UTF-8.
        self.assertEqual(len(self.admin.mkdir(d + "/" + "n" * 255).name), 255)
        self.assertEqual(self.admin.put(d + "/grüße.txt").name, "grüße.txt")

    def test_oversized_fields_are_invalid_arguments_that_give_the_limit(self):
        d = self.folder()
        self.admin.put(d + "/f")
        cases = [
            (lambda: self.admin.put(d + "/f", mime="x" * 256), "mime is 256 bytes", "255"),
            (lambda: self.admin.put(d + "/f", checksum=meta_pb2.Checksum(algorithm="a" * 33)),
             "checksum.algorithm is 33 bytes", "32"),
            (lambda: self.admin.put(d + "/f", checksum=meta_pb2.Checksum(value="v" * 513)),
             "checksum.value is 513 bytes", "512"),
            (lambda: self.admin.put(d + "/f", if_match="e" * 65), "if_match is 65 bytes", "64"),
            (lambda: self.admin.SetAttributes(meta_pb2.SetAttributesRequest(
                path=d + "/f", set={"k": "v" * 4097})), "4097", "4096"),
            (lambda: self.admin.SetAttributes(meta_pb2.SetAttributesRequest(
                path=d + "/f", set={"k" * 256: "v"})), "256", "255"),
            (lambda: self.admin.SetAttributes(meta_pb2.SetAttributesRequest(
                path=d + "/f", unset=[f"a{i}" for i in range(1001)])), "1001 attributes", "1000"),
            (lambda: self.admin.Changes(meta_pb2.ChangesRequest(max_revisions=10001)), "10001", "10000"),
        ]
        for call, *words in cases:
            e = self.fails(StatusCode.INVALID_ARGUMENT, call)
            self.assertMentions(e, *words)
        self.assertEqual(self.admin.stat(d + "/f").mime, "", "a refused call changed nothing")

    def test_an_oversized_message_is_refused_with_the_limit(self):
        d = self.folder()
        # 2 MiB, over max_request_bytes (1 MiB): RESOURCE_EXHAUSTED naming the setting (tonic's
        # codec says OUT_OF_RANGE, which the protos keep for a change cursor that is too old).
        e = self.fails(StatusCode.RESOURCE_EXHAUSTED, self.admin.put, d + "/big", mime="x" * (2 << 20))
        self.assertMentions(e, "max_request_bytes", "1048576")
        self.fails(StatusCode.NOT_FOUND, self.admin.stat, d + "/big")
        # Just under the limit the codec takes it, and the field check refuses the mime.
        e = self.fails(StatusCode.INVALID_ARGUMENT, self.admin.put, d + "/big", mime="x" * (1 << 19))
        self.assertMentions(e, "mime")

    def test_a_request_that_does_not_parse_is_an_invalid_argument(self):
        # A StatRequest whose path (field 2) is not UTF-8: the client's fault, not the server's.
        raw = self.admin.server.channel.unary_unary(
            "/tera.meta.v1.Metadata/Stat",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        e = self.fails(StatusCode.INVALID_ARGUMENT, raw, b"\x12\x03\x2f\xff\xfe",
                       metadata=self.admin.md, timeout=CALL_TIMEOUT)
        self.assertMentions(e, "does not parse")

    def test_wrong_kind_is_a_failed_precondition(self):
        d = self.folder()
        self.admin.put(d + "/file")
        self.admin.mkdir(d + "/dir")
        for call, words in (
            (lambda: self.admin.List(meta_pb2.ListRequest(path=d + "/file")), "not a folder"),
            (lambda: self.admin.put(d + "/dir"), "is a folder"),
            (lambda: self.admin.put(d + "/file/x"), "not a folder"),
            (lambda: self.admin.Move(meta_pb2.MoveRequest(from_path=d + "/dir",
                                                          to_path=d + "/file/dir")), "not a folder"),
        ):
            e = self.fails(StatusCode.FAILED_PRECONDITION, call)
            self.assertMentions(e, words)


class HealthReflectionTests(Base):
    def test_health_is_serving_without_a_token(self):
        for service in ("", "tera.meta.v1.Metadata", "tera.auth.v1.Auth"):
            r = self.main.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT)
            self.assertEqual(r.status, health_pb2.HealthCheckResponse.SERVING, service)
        e = self.fails(StatusCode.NOT_FOUND, self.main.health.Check,
                       health_pb2.HealthCheckRequest(service="no.Such"), timeout=CALL_TIMEOUT)
        self.assertMentions(e, "no.Such", "tera.meta.v1.Metadata")
        watch = self.main.health.Watch(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        self.assertEqual(next(watch).status, health_pb2.HealthCheckResponse.SERVING)
        watch.cancel()

    def test_grpcio_reflection_client_builds_a_stat_request_from_the_server(self):
        db = ProtoReflectionDescriptorDatabase(self.main.channel)
        services = set(db.get_services())
        for s in ("tera.meta.v1.Metadata", "tera.auth.v1.Auth", "grpc.health.v1.Health",
                  "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"):
            self.assertIn(s, services)
        pool = descriptor_pool.DescriptorPool(db)
        svc = pool.FindServiceByName("tera.meta.v1.Metadata")
        self.assertEqual({m.name for m in svc.methods},
                         {"Stat", "List", "CreateFolder", "Move", "Delete", "CommitUpload",
                          "SetAttributes", "Changes", "WatchChanges", "GetUsage"})
        self.assertEqual(svc.file.name, "tera/meta/v1/meta.proto")
        watch = svc.FindMethodByName("WatchChanges")
        watch_proto = descriptor_pb2.MethodDescriptorProto()
        watch.CopyToProto(watch_proto)
        self.assertTrue(watch_proto.server_streaming)
        stat = svc.FindMethodByName("Stat")
        Request = message_factory.GetMessageClass(stat.input_type)
        Entry = message_factory.GetMessageClass(stat.output_type)
        self.assertEqual(stat.output_type.full_name, "tera.meta.v1.Entry")
        d = self.folder()
        self.admin.put(d + "/dyn", size=77)
        call = self.main.channel.unary_unary(
            "/tera.meta.v1.Metadata/Stat", request_serializer=Request.SerializeToString,
            response_deserializer=Entry.FromString)
        entry = call(Request(path=d + "/dyn"), metadata=self.admin.md, timeout=CALL_TIMEOUT)
        kind = stat.output_type.fields_by_name["kind"].enum_type.values_by_number[entry.kind].name
        self.assertEqual((entry.name, entry.size, kind), ("dyn", 77, "KIND_FILE"))
        # The reflected message and the generated one agree on the wire.
        self.assertEqual(meta_pb2.Entry.FromString(entry.SerializeToString()), self.admin.stat(d + "/dyn"))
        with self.assertRaises(KeyError):
            db.FindFileContainingSymbol("tera.meta.v1.NoSuchThing")

    def test_reflection_v1_lists_services_and_serves_files(self):
        stub = refl_v1_grpc.ServerReflectionStub(self.main.channel)
        reqs = [refl_v1_pb2.ServerReflectionRequest(list_services=""),
                refl_v1_pb2.ServerReflectionRequest(file_containing_symbol="tera.auth.v1.Auth"),
                refl_v1_pb2.ServerReflectionRequest(file_by_filename="no/such.proto")]
        listed, auth_file, missing = list(stub.ServerReflectionInfo(iter(reqs), timeout=CALL_TIMEOUT))
        names = {s.name for s in listed.list_services_response.service}
        self.assertTrue({"tera.meta.v1.Metadata", "tera.auth.v1.Auth", "grpc.health.v1.Health",
                         "grpc.reflection.v1.ServerReflection"} <= names, names)
        self.assertEqual(listed.original_request.WhichOneof("message_request"), "list_services")
        fd = descriptor_pb2.FileDescriptorProto.FromString(
            auth_file.file_descriptor_response.file_descriptor_proto[0])
        self.assertEqual((fd.name, fd.package), ("tera/auth/v1/auth.proto", "tera.auth.v1"))
        self.assertEqual([s.name for s in fd.service], ["Auth"])
        self.assertEqual(missing.error_response.error_code, StatusCode.NOT_FOUND.value[0])
        self.assertIn("no/such.proto", missing.error_response.error_message)


class LimitsTests(Base):
    """Against the second terad: max_concurrent_requests=1, max_watches=1,
    token_ttl_secs=3, changelog_mib=1."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        pw = read_password(ARGS.limits_password_file)
        cls.password = pw
        cls.user = User(cls.limits, cls.limits.token("admin", pw).token)

    def test_a_call_past_the_concurrency_limit_is_shed(self):
        u = self.user
        deadline = time.monotonic() + 20
        shed = None
        while shed is None:
            self.assertLess(time.monotonic(), deadline, "no call was ever shed")
            # A long poll holds the one permit while it waits for a change that never comes.
            poll = self.limits.meta.Changes.future(
                meta_pb2.ChangesRequest(cursor=u.revision(), wait_ms=1500), metadata=u.md, timeout=10)
            while not poll.done():
                try:
                    u.GetUsage(meta_pb2.GetUsageRequest())
                except grpc.RpcError as e:
                    shed = e
                    # Health is exempt from the limit.
                    r = self.limits.health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
                    self.assertEqual(r.status, health_pb2.HealthCheckResponse.SERVING)
                    break
            try:
                poll.result()
            except grpc.RpcError as e:
                # The poll itself came second and was shed: that shows it too.
                shed = shed or e
        self.assertEqual(shed.code(), StatusCode.RESOURCE_EXHAUSTED, shed.details())
        self.assertIn("limit of 1 requests", shed.details())
        self.assertIn("retry with backoff", shed.details())

    def test_an_expired_token_is_refused(self):
        asked = time.time()
        t = self.limits.token("admin", self.password, ttl=0)  # the server's token_ttl_secs: 3
        answered = time.time()
        # Issued while the call ran (an argon2 check: up to seconds on a slow machine), for 3 s.
        self.assertGreaterEqual(t.expires_at, int(asked) + 3)
        self.assertLessEqual(t.expires_at, int(answered) + 3)
        short = User(self.limits, t.token)
        self.assertEqual(self.limits.auth.Ping(auth_pb2.PingRequest(), metadata=short.md,
                                               timeout=CALL_TIMEOUT).user, "admin")
        stream = short.WatchChanges(meta_pb2.WatchChangesRequest(cursor=short.revision()), timeout=30)
        stream.initial_metadata()
        # What is tested is the expiry itself: wait it out.
        time.sleep(max(0.0, t.expires_at - time.time()) + 0.05)
        for call in (lambda: self.limits.auth.Ping(auth_pb2.PingRequest(), metadata=short.md,
                                                   timeout=CALL_TIMEOUT),
                     lambda: short.stat("/")):
            e = self.fails(StatusCode.UNAUTHENTICATED, call)
            self.assertMentions(e, f"token expired at {t.expires_at}", "get a new one")
        # An open WatchChanges stream ends when its token expires.
        e = self.fails(StatusCode.UNAUTHENTICATED, next, stream)
        self.assertMentions(e, "expired during the stream", "last cursor")

    def test_only_max_watches_streams_are_open_at_once(self):
        u = self.user
        deadline = time.monotonic() + 10
        while True:
            first = u.WatchChanges(meta_pb2.WatchChangesRequest(cursor=u.revision()), timeout=30)
            first.initial_metadata()  # the stream is open, or was refused
            if first.is_active():
                break
            # The stream of an earlier test may not have released its slot yet.
            self.assertEqual(first.code(), StatusCode.RESOURCE_EXHAUSTED, first.details())
            self.assertLess(time.monotonic(), deadline, "the first watch was never admitted")
        second = u.WatchChanges(meta_pb2.WatchChangesRequest(cursor=u.revision()), timeout=30)
        e = self.fails(StatusCode.RESOURCE_EXHAUSTED, next, second)
        self.assertMentions(e, "limit (1)", "poll with Changes")
        first.cancel()

    def test_a_cursor_older_than_the_history_is_out_of_range(self):
        u = self.user
        ring = "/ring-" + self.top.rsplit("/", 1)[1]
        u.mkdir(ring)
        u.put(ring + "/f")
        r0 = u.revision()
        u.put(ring + "/f", size=2)
        self.assertTrue(u.Changes(meta_pb2.ChangesRequest(cursor=r0)).changes)
        # changelog_mib=1: about half a MiB of history. Each call below adds about 240 KB.
        big = {f"k{i:02}": f"{i:02}" * 2000 for i in range(60)}
        for i in range(40):
            u.SetAttributes(meta_pb2.SetAttributesRequest(
                path=ring + "/f", set={k: v[:-1] + chr(65 + i % 26) for k, v in big.items()}))
            try:
                u.Changes(meta_pb2.ChangesRequest(cursor=r0, max_revisions=1))
            except grpc.RpcError as e:
                self.assertEqual(e.code(), StatusCode.OUT_OF_RANGE, e.details())
                self.assertMentions(e, f"cursor {r0} is too old", "revision (usage) first, then list it again")
                break
        else:
            self.fail("40 changes of 240 KB did not push the cursor out of a 1 MiB history")
        stream = u.WatchChanges(meta_pb2.WatchChangesRequest(cursor=r0), timeout=30)
        e = self.fails(StatusCode.OUT_OF_RANGE, next, stream)
        self.assertMentions(e, f"cursor {r0} is too old")
        # What the message says to do works: list, then follow from GetUsage.revision.
        self.assertEqual([e.name for e in u.list_all(ring)[0]], ["f"])
        page = u.Changes(meta_pb2.ChangesRequest(cursor=u.revision()))
        self.assertEqual(list(page.changes), [])
        u.SetAttributes(meta_pb2.SetAttributesRequest(path=ring + "/f", unset=list(big)))


class TimedResult(unittest.TextTestResult):
    """Prints each test's time after its outcome, to keep an eye on the suite's length."""

    def startTest(self, test):
        self._started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        self.stream.writeln(f"    {time.monotonic() - self._started:.2f} s")


def functional(args):
    suite = unittest.TestSuite()
    loader = unittest.TestLoader()
    for cls in (AuthTests, MetadataTests, ErrorTests, HealthReflectionTests, LimitsTests):
        suite.addTests(loader.loadTestsFromTestCase(cls))
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=TimedResult)
    result = runner.run(suite)
    return 0 if result.wasSuccessful() and result.testsRun > 0 else 1


# ---------------------------------------------------------------- load and verify phases


class AckLog:
    """The acknowledged writes (and the attempts before them), one JSON object a line."""

    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def write(self, **rec):
        line = json.dumps(rec, sort_keys=True)
        with self.lock:
            self.f.write(line + "\n")

    def close(self):
        with self.lock:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()


def load(args):
    server = Server(args.server)
    server.wait_serving()
    token = server.token("admin", read_password(args.password_file)).token
    User(server, token).mkdir("/load", parents=True)
    acks = AckLog(args.acks)
    draining = threading.Event()
    started = threading.Barrier(args.threads + 1)
    failures, drain_codes, drain_details = [], collections.Counter(), {}
    counts = collections.Counter()
    stop_at = time.monotonic() + args.max_seconds

    def worker(t):
        # A channel (and so a connection) per thread.
        u = User(Server(args.server), token)
        base = f"/load/t{t}"
        folder, last, n, signalled = base, None, 0, False
        pending = ("folder", base, None)
        try:
            acks.write(a="attempt", kind="folder", path=base)
            u.mkdir(base)
            acks.write(a="ack", kind="folder", path=base)
            while time.monotonic() < stop_at:
                n += 1
                if n % 20 == 0:
                    folder = f"{base}/d{n}"
                    pending = ("folder", folder, None)
                    acks.write(a="attempt", kind="folder", path=folder)
                    u.mkdir(folder)
                    acks.write(a="ack", kind="folder", path=folder)
                    counts["folders"] += 1
                    continue
                overwrite = last is not None and n % 3 == 0
                path = last[0] if overwrite else f"{folder}/f{n}"
                size, checksum = n * 10 + t, f"{t}-{n}"
                pending = ("file", path, size)
                acks.write(a="attempt", kind="file", path=path, size=size, checksum=checksum)
                kw = {"if_match": last[1]} if overwrite else {"if_none_match": True}
                e = u.put(path, size=size, checksum=meta_pb2.Checksum(algorithm="test", value=checksum),
                          **kw)
                acks.write(a="ack", kind="file", path=path, size=e.size, etag=e.etag,
                           checksum=e.checksum.value)
                last = (path, e.etag)
                counts["overwrites" if overwrite else "files"] += 1
                # Acknowledged once the drain was announced (in flight at SIGTERM, or just before).
                counts["after drain noted"] += draining.is_set()
                if not signalled:
                    signalled = True
                    started.wait()
        except grpc.RpcError as e:
            if draining.is_set():
                # A draining terad answers every call it took and refuses the rest unprocessed,
                # and UNAVAILABLE is how a refusal reaches the client (a refused stream, a
                # closed listener, terad's own "draining"): verify checks that such a write
                # did not happen. Any other error (a deadline, say, which ends the call but
                # not a write already under way) leaves the outcome open.
                if e.code() == StatusCode.UNAVAILABLE:
                    acks.write(a="refused", kind=pending[0], path=pending[1], code=e.code().name)
                drain_codes[e.code().name] += 1
                drain_details.setdefault(e.code().name, e.details())
            else:
                failures.append(f"thread {t}: {pending[0]} {pending[1]}: {e.code().name}: {e.details()}")
        finally:
            if not signalled:
                started.abort()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(args.threads)]
    for th in threads:
        th.start()
    try:
        started.wait(timeout=30)
        print("load: running", flush=True)
    except threading.BrokenBarrierError:
        print("load: a thread failed before its first write", flush=True)
    for line in sys.stdin:
        if line.strip() == "draining":
            draining.set()
            print("load: drain noted", flush=True)
            break
    for th in threads:
        th.join(timeout=max(0.0, stop_at - time.monotonic()) + 5)
    acks.close()
    alive = sum(th.is_alive() for th in threads)
    print(f"load: acknowledged {counts['files']} new files, {counts['overwrites']} overwrites, "
          f"{counts['folders']} folders ({counts['after drain noted']} files after the drain was "
          f"noted); errors after the drain began: {dict(drain_codes) or 'none'}",
          flush=True)
    for code, details in sorted(drain_details.items()):
        print(f"load: e.g. {code}: {details}", flush=True)
    for f in failures:
        print(f"load: FAILED before the drain: {f}", flush=True)
    if alive:
        print(f"load: FAILED: {alive} threads still running after {args.max_seconds} s", flush=True)
    return 1 if failures or alive or not draining.is_set() else 0


def verify(args):
    server = Server(args.server)
    server.wait_serving()
    u = User(server, server.token("admin", read_password(args.password_file)).token)
    history = collections.defaultdict(list)
    with open(args.acks) as f:
        for line in f:
            rec = json.loads(line)
            history[rec["path"]].append(rec)
    problems, checked, unknown = [], collections.Counter(), 0
    for path, recs in history.items():
        acked = [r for r in recs if r["a"] == "ack"]
        last_ack = acked[-1] if acked else None
        # An attempt after the last ack has no known outcome (the thread stopped at its error)
        # unless terad refused it while draining: then it must not have happened, since a
        # drain answers what it took and takes nothing more.
        open_attempt = recs[-1] if recs[-1]["a"] == "attempt" else None
        unknown += open_attempt is not None
        refused = recs[-1] if recs[-1]["a"] == "refused" else None
        checked["refused"] += refused is not None
        try:
            e = u.stat(path)
        except grpc.RpcError as err:
            if err.code() == StatusCode.NOT_FOUND and last_ack is None:
                continue  # created by an attempt whose outcome is unknown: either way is fine
            problems.append(f"{path}: acknowledged ({last_ack}) but stat says {err.code().name}: "
                            f"{err.details()}")
            continue
        if last_ack is None and refused is not None:
            problems.append(f"{path}: refused ({refused['code']}) while draining, yet it exists: "
                            "terad dropped the answer to a call it had carried out")
            continue
        if last_ack is None:
            want = open_attempt
        else:
            want = last_ack
        kind = meta_pb2.KIND_FILE if want["kind"] == "file" else meta_pb2.KIND_FOLDER
        if e.kind != kind:
            problems.append(f"{path}: acknowledged as a {want['kind']}, found kind {e.kind}")
            continue
        if want["kind"] == "folder":
            checked["folders"] += last_ack is not None
            continue
        as_acked = last_ack is not None and (e.size, e.etag, e.checksum.value) == (
            last_ack["size"], last_ack["etag"], last_ack["checksum"])
        as_attempted = open_attempt is not None and (e.size, e.checksum.value) == (
            open_attempt["size"], open_attempt["checksum"])
        if as_acked or as_attempted:
            checked["files"] += last_ack is not None
        elif refused is not None:
            problems.append(f"{path}: refused ({refused['code']}) while draining, yet carried "
                            f"out: acknowledged size {want.get('size')} etag {want.get('etag')}, "
                            f"found size {e.size} etag {e.etag}")
        else:
            problems.append(f"{path}: acknowledged size {want.get('size')} etag {want.get('etag')} "
                            f"checksum {want.get('checksum')}, found size {e.size} etag {e.etag} "
                            f"checksum {e.checksum.value}")
    # Nothing is there that was never attempted.
    listed = 0
    stack = ["/load"]
    while stack:
        p = stack.pop()
        for e in u.list_all(p, page_size=500)[0]:
            child = f"{p}/{e.name}"
            listed += 1
            if child not in history:
                problems.append(f"{child}: listed but never written")
            if e.kind == meta_pb2.KIND_FOLDER:
                stack.append(child)
    acked_paths = sum(any(r["a"] == "ack" for r in recs) for recs in history.values())
    print(f"verify: {acked_paths} acknowledged paths: {checked['files']} files match their "
          f"acknowledged size, etag and checksum (or a later unacknowledged attempt), "
          f"{checked['folders']} folders present; {unknown} attempts without an outcome; "
          f"{checked['refused']} writes refused while draining; "
          f"{listed} entries listed under /load", flush=True)
    for p in problems[:50]:
        print(f"verify: MISSING OR WRONG: {p}", flush=True)
    if len(problems) > 50:
        print(f"verify: ... and {len(problems) - 50} more", flush=True)
    if acked_paths < args.min_acks:
        print(f"verify: FAILED: only {acked_paths} acknowledged paths, fewer than {args.min_acks}: "
              "the load did not run", flush=True)
        return 1
    return 1 if problems else 0


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--proto-dir", default=os.path.join(here, "..", "..", "server", "proto"))
    sub = p.add_subparsers(dest="phase", required=True)
    f = sub.add_parser("functional")
    f.add_argument("--server", required=True)
    f.add_argument("--password-file", required=True)
    f.add_argument("--bob-password", required=True)
    f.add_argument("--carol-password", required=True)
    f.add_argument("--limits-server", required=True)
    f.add_argument("--limits-password-file", required=True)
    for name in ("load", "verify"):
        s = sub.add_parser(name)
        s.add_argument("--server", required=True)
        s.add_argument("--password-file", required=True)
        s.add_argument("--acks", required=True)
        s.add_argument("--threads", type=int, default=8)
        s.add_argument("--max-seconds", type=float, default=30.0)
        s.add_argument("--min-acks", type=int, default=50)
    ARGS = p.parse_args()
    out = tempfile.mkdtemp(prefix="tera-stubs-")
    try:
        n = generate_stubs(os.path.abspath(ARGS.proto_dir), out)
        print(f"e2e.py: generated stubs for {n} protos with grpcio-tools into {out} "
              f"(grpcio {grpc.__version__})", flush=True)
        return {"functional": functional, "load": load, "verify": verify}[ARGS.phase](ARGS)
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
