#!/usr/bin/env bash
# Build containers/Dockerfile with podman (no Docker daemon needed) and run the App inside the image
# as a user would: `qsmflow --version`, then `qsmflow demo` as a non-root UID that is not in the
# image's /etc/passwd, with the input dataset mounted read-only; then check the χ maps, the brain
# mask's method, GeneratedBy.Container, that the input is unchanged and that the outputs belong to
# that UID; and run apptainer.def's %test commands in the image with its %environment.
#
#   bash .ci/container-test.sh          # as root; about 10 minutes on 2 cores
#
# `podman run` is refused in this sandbox, so a container's rootfs is mounted (`podman mount`) and
# the image's entry point runs there with chroot, with the image's Env, WorkingDir and Entrypoint
# read from its config, /proc and /dev mounted and the data bind-mounted (`-v` as docker does),
# all inside a private mount namespace (unshare) that vanishes with the command.
#
# Environment (all optional):
#   PYTHON_IMAGE          base image to build on. Default: a Debian 12 base made here with
#                         mmdebstrap (CI has no registry); users may set python:3.11-slim-bookworm,
#                         the Dockerfile's default, which podman then pulls.
#   QSMFLOW_TORCH_WHEEL   the CPU torch wheel file to build with. Default: the one that
#                         `pip download torch==VERSION+cpu` finds (on CI: the file on disk); when
#                         there is none, the build downloads it from the PyTorch CPU index.
#   QSMFLOW_CT_DIR        work folder (podman storage, base tarball, demo). Default: a new folder
#                         in /var/tmp, removed at the end.
#   QSMFLOW_CT_KEEP=1     keep that folder and the image (then: podman --root DIR/storage ...).
#   QSMFLOW_CT_UID=4242   the UID:GID the demo runs as.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
T_START=$SECONDS
say() { printf '[container-test %4ds] %s\n' "$((SECONDS - T_START))" "$*"; }
die() { printf '\n[container-test] FAILED: %s\n\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (podman with vfs storage, mount, chroot)"
DOCKERFILE=containers/Dockerfile
VERSION=$(sed -n 's/^ARG QSMFLOW_VERSION=\(.*\)$/\1/p' "$DOCKERFILE")
TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=\(.*\)$/\1/p' "$DOCKERFILE")
[ -n "$VERSION" ] && [ -n "$TORCH_VERSION" ] || die "no QSMFLOW_VERSION/TORCH_VERSION in $DOCKERFILE"
TAG="qsmflow/qsmflow:${VERSION}"   # the Dockerfile's default IMAGE_TAG: what GeneratedBy records
DEMO_UID=${QSMFLOW_CT_UID:-4242}

# --- tools -------------------------------------------------------------------------------------
need=()
command -v podman >/dev/null || need+=(podman)
[ -n "${PYTHON_IMAGE:-}" ] || command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    ok=0
    for try in 1 2 3; do
        if apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null; then
            ok=1; break
        fi
        say "apt-get failed (try $try of 3)"; sleep 10
    done
    [ $ok = 1 ] || die "cannot install ${need[*]} with apt-get: the image cannot be built here"
fi
for t in podman unshare chroot mount python3 sha256sum; do
    command -v "$t" >/dev/null || die "$t not found"
done
say "$(podman --version)"

# --- work folder and podman storage of our own (a fresh podman every run) -----------------------
if [ -n "${QSMFLOW_CT_DIR:-}" ]; then D=$QSMFLOW_CT_DIR; mkdir -p "$D"
else D=$(mktemp -d /var/tmp/qsmflow-ct.XXXXXX); fi
D=$(cd "$D" && pwd)
P=(podman --root "$D/storage" --runroot "$D/run" --storage-driver vfs)
IMG=""
cleanup() {
    set +e
    [ -n "$IMG" ] && "${P[@]}" image unmount "$TAG" >/dev/null 2>&1
    if [ "${QSMFLOW_CT_KEEP:-0}" != 1 ]; then
        "${P[@]}" system reset -f >/dev/null 2>&1
        rm -rf "$D"
    else
        echo "[container-test] kept $D (image $TAG: podman --root $D/storage --runroot $D/run --storage-driver vfs images)"
    fi
}
trap cleanup EXIT
avail_gb=$(( $(df --output=avail -k "$D" | tail -n 1) / 1024 / 1024 ))
[ "$avail_gb" -ge 10 ] || die "only ${avail_gb} GB free under $D: the build needs about 5 GB"

host_ca=/etc/ssl/certs/ca-certificates.crt

build_image() {
    # --- base image ----------------------------------------------------------------------------
    if [ -n "${PYTHON_IMAGE:-}" ]; then
        BASE=$PYTHON_IMAGE
        say "base: $BASE (pulled)"
        "${P[@]}" pull -q "$BASE" >/dev/null || die "cannot pull $BASE"
    else
        BASE=localhost/debian-base:bookworm
        say "base: Debian 12 minbase + python3, python3-venv, ca-certificates (mmdebstrap)"
        local t0=$SECONDS
        mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$D/base.tar" >"$D/mmdebstrap.log" 2>&1 \
            || { tail -n 30 "$D/mmdebstrap.log"; die "mmdebstrap failed"; }
        "${P[@]}" import -q "$D/base.tar" "$BASE" >/dev/null || die "podman import failed"
        rm -f "$D/base.tar"
        say "base ready in $((SECONDS - t0)) s"
    fi
    "${P[@]}" image exists "$BASE" || die "no base image $BASE"

    # --- the CPU torch wheel (build context "torch-wheel") -------------------------------------
    rm -rf "$D/torch-wheel"
    mkdir -p "$D/torch-wheel"
    if [ -n "${QSMFLOW_TORCH_WHEEL:-}" ]; then
        cp "$QSMFLOW_TORCH_WHEEL" "$D/torch-wheel/"
    else
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
            --dest "$D/torch-wheel" "torch==${TORCH_VERSION}+cpu" >/dev/null 2>&1 || true
    fi
    local whl
    whl=$(find "$D/torch-wheel" -maxdepth 1 -name "torch-${TORCH_VERSION}+cpu-cp311-*.whl" -print -quit)
    if [ -n "$whl" ]; then
        say "torch wheel: $(basename "$whl") (sha256 $(sha256sum "$whl" | cut -c1-16)...)"
    else
        say "no local CPU torch wheel: the build downloads it from the PyTorch CPU index"
    fi

    # --- build ---------------------------------------------------------------------------------
    local build=("${P[@]}" build --layers=false --pull=never --isolation chroot --network host
                 --ignorefile containers/Dockerfile.dockerignore
                 --build-arg "PYTHON_IMAGE=$BASE" --build-context "torch-wheel=$D/torch-wheel"
                 -t "$TAG" -f "$DOCKERFILE")
    # The build's RUN steps see the host's CA bundle (bind-mounted, never stored in the image):
    # where the package index is reached through a TLS proxy, only the host trusts its CA.
    [ -f "$host_ca" ] && build+=(--volume "$host_ca:$host_ca:ro")
    say "building $TAG (log: $D/build.log)"
    local t0=$SECONDS
    "${build[@]}" . >"$D/build.log" 2>&1 || { tail -n 60 "$D/build.log"; die "podman build failed"; }
    BUILD_S=$((SECONDS - t0))
    rm -rf "$D/torch-wheel"
    say "built in ${BUILD_S} s; $(grep "^torch wheel: " "$D/build.log" || echo "torch wheel: ?")"
}

if [ "${QSMFLOW_CT_REUSE:-0}" = 1 ] && "${P[@]}" image exists "$TAG"; then
    say "reusing the image $TAG in $D/storage (QSMFLOW_CT_REUSE=1): no build"
    BUILD_S=0
else
    build_image
fi
SIZE=$("${P[@]}" image inspect --format '{{.Size}}' "$TAG")
say "image size $((SIZE / 1000000)) MB (uncompressed)"

# --- the image's rootfs (read-only below each run's overlay) and its config ---------------------
IMG=$("${P[@]}" image mount "$TAG")
"${P[@]}" image inspect --format '{{json .Config}}' "$TAG" >"$D/config.json"
python3 - "$D" "$TAG" <<'EOF' || die "the image's config is not what the Dockerfile promises"
import json, sys
d, tag = sys.argv[1:]
c = json.load(open(f"{d}/config.json"))
env = dict(e.split("=", 1) for e in c["Env"])
user = c.get("User", "")
assert user and user.split(":")[0] not in ("", "0", "root"), f"runs as root: User={user!r}"
assert c.get("Entrypoint") == ["qsmflow"], c.get("Entrypoint")
assert env.get("QSMFLOW_CONTAINER") == tag, env.get("QSMFLOW_CONTAINER")
assert env.get("HOME") == "/tmp" and env.get("OMP_NUM_THREADS") == "1", env
open(f"{d}/env", "w").write("".join(e + "\n" for e in c["Env"]))
open(f"{d}/user", "w").write(user)
open(f"{d}/workdir", "w").write(c.get("WorkingDir") or "/")
open(f"{d}/entrypoint", "w").write("".join(a + "\n" for a in c["Entrypoint"]))
open(f"{d}/cmd", "w").write("".join(a + "\n" for a in (c.get("Cmd") or [])))
EOF
mapfile -t ENTRYPOINT <"$D/entrypoint"
mapfile -t CMD <"$D/cmd"
IMAGE_USER=$(cat "$D/user")
# the host's CA bundle was only lent to the build
if [ -f "$host_ca" ] && cmp -s "$host_ca" "$IMG$host_ca"; then
    die "the image holds the host's CA bundle: the build's --volume leaked into it"
fi

# in_image USER [SRC:DST:ro|rw ...] -- COMMAND...   like `docker run --rm -u USER -v SRC:DST:MODE
# IMAGE COMMAND...`: COMMAND runs as USER (uid:gid) with the image's Env and WorkingDir on an
# overlay of the image's rootfs (its writes go to a tmpfs and vanish, the image stays as built)
in_image() {
    local user=$1; shift
    local binds=()
    while [ "$1" != -- ]; do binds+=("$1"); shift; done
    shift
    mkdir -p "$D/overlay"
    unshare --mount --propagation private -- bash -euc '
        img=$1 user=$2 d=$3 nb=$4; shift 4
        ov=$d/overlay root=$d/overlay/root
        mount -t tmpfs -o mode=0755 tmpfs "$ov"
        mkdir "$ov/upper" "$ov/work" "$root"
        mount -t overlay overlay -o "lowerdir=$img,upperdir=$ov/upper,workdir=$ov/work" "$root"
        for ((i = 0; i < nb; i++)); do
            IFS=: read -r src dst mode <<<"$1"; shift
            if [ -d "$src" ]; then mkdir -p "$root$dst"; else touch "$root$dst"; fi
            mount --bind "$src" "$root$dst"
            [ "$mode" = ro ] && mount -o remount,bind,ro "$root$dst"
        done
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
        mapfile -t envs <"$d/env"
        exec env -i "${envs[@]}" "$(command -v chroot)" --userspec="$user" "$root" \
            /bin/sh -c "cd \"\$0\" && exec \"\$@\"" "$(cat "$d/workdir")" "$@"
    ' in_image "$IMG" "$user" "$D" "${#binds[@]}" "${binds[@]}" "$@"
}

# --- 1: the entry point as the image's own user ------------------------------------------------
say "qsmflow --version (as $IMAGE_USER)"
out=$(in_image "$IMAGE_USER" -- "${ENTRYPOINT[@]}" --version) || die "qsmflow --version failed"
echo "  $out"
[ "$out" = "qsmflow $VERSION" ] || die "qsmflow --version printed '$out', not 'qsmflow $VERSION'"
in_image "$IMAGE_USER" -- "${ENTRYPOINT[@]}" "${CMD[@]}" >"$D/help.txt" \
    || die "the image's default command (${CMD[*]}) failed"
grep -q participant "$D/help.txt" || die "the default command printed no usage"

# --- 2: the demo, as a UID the image does not know, with the input read-only -------------------
U="$DEMO_UID:$DEMO_UID"
rm -rf "$D/demo"
mkdir -p "$D/demo"
chown "$U" "$D/demo"
say "simulating the demo dataset (1 subject) as $U"
in_image "$U" "$D/demo:/demo:rw" -- python -c \
    "from qsmflow.sims.megre import make_demo_dataset; make_demo_dataset('/demo/bids', n_subjects=1)" \
    || die "simulating the demo dataset failed"
(cd "$D/demo/bids" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$D/input.sha256"
inversions=(tkd medi metaqsm)
say "qsmflow demo /demo --inversion ${inversions[*]} as $U, /demo/bids read-only"
t0=$SECONDS
in_image "$U" "$D/demo:/demo:rw" "$D/demo/bids:/demo/bids:ro" -- \
    "${ENTRYPOINT[@]}" demo /demo --n-subjects 1 --inversion "${inversions[@]}" >"$D/demo.log" 2>&1 \
    || { tail -n 40 "$D/demo.log"; die "qsmflow demo failed in the image"; }
DEMO_S=$((SECONDS - t0))
sed -n '/^χ maps/,$p' "$D/demo.log" | sed 's/^/  /'
say "demo ran in ${DEMO_S} s"

# --- 3: the outputs ----------------------------------------------------------------------------
if in_image "$U" "$D/demo:/demo:rw" "$D/demo/bids:/demo/bids:ro" -- touch /demo/bids/probe 2>/dev/null; then
    die "the read-only input was writable: the check above proves nothing"
fi
(cd "$D/demo/bids" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | cmp -s - "$D/input.sha256" \
    || die "the input dataset changed"
not_ours=$(find "$D/demo/derivatives" "$D/demo/work" ! -uid "$DEMO_UID" -print -quit)
[ -z "$not_ours" ] || die "$not_ours is not owned by UID $DEMO_UID"
in_image "$U" "$D/demo:/demo:ro" -- python - "$TAG" "${inversions[@]}" <<'EOF' || die "the demo's outputs are wrong"
import json, sys
from pathlib import Path
import nibabel as nib
import numpy as np
tag, inversions = sys.argv[1], sys.argv[2:]
deriv = Path("/demo/derivatives/qsmflow")
desc = json.loads((deriv / "dataset_description.json").read_text())
gen = desc["GeneratedBy"][0]
assert gen["Name"] == "qsmflow", gen
assert gen.get("Container") == {"Type": "docker", "Tag": tag}, gen.get("Container")
anat = deriv / "sub-01" / "anat"
mask_path, = anat.glob("*_desc-brain_mask.nii.gz")
mask = np.asarray(nib.load(mask_path).dataobj) > 0
masking = json.loads(mask_path.with_name(mask_path.name.replace(".nii.gz", ".json")).read_text())
assert masking.get("Masking") == "deepbet", f"brain mask by {masking.get('Masking')!r}, not deepbet"
assert 0.05 < mask.mean() < 0.6, f"brain mask covers {mask.mean():.1%} of the field of view"
for m in inversions:
    p, = anat.glob(f"*_desc-{m}_Chimap.nii.gz")
    chi = np.asarray(nib.load(p).dataobj, dtype=float)
    side = json.loads(p.with_name(p.name.replace(".nii.gz", ".json")).read_text())
    assert chi.shape == mask.shape and np.isfinite(chi).all(), (m, chi.shape)
    inside = chi[mask]
    assert 0.005 < inside.std() < 0.5, f"{m}: chi std {inside.std():.4f} ppm in the brain"
    assert side.get("Units") == "ppm", (m, side.get("Units"))
    print(f"  {p.name}: {chi.shape}, chi in brain {inside.min():+.3f} .. {inside.max():+.3f} ppm")
print(f"  brain mask: deepbet, {mask.sum()} voxels; GeneratedBy.Container = {gen['Container']}")
EOF
# the demo's own accuracy table: every NRMSE printed and below 100 %
python3 - "$D/demo.log" "${inversions[@]}" <<'EOF' || die "the demo's χ maps are far from the truth"
import re, sys
log, inv = open(sys.argv[1]).read(), sys.argv[2:]
err = {m: float(e) for m, e in re.findall(r"sub-01\s+(\S+): +([0-9.]+) %", log)}
assert set(err) == set(inv), err
assert all(e < 100 for e in err.values()), err
EOF

# --- 4: apptainer.def's %environment and %test, in the same image -----------------------------
section() { awk -v s="%$1" '/^%/{on = ($1 == s); next} on' containers/apptainer.def; }
say "apptainer.def %test (with its %environment) as $U"
{ echo "set -e"; section environment; section test; } >"$D/demo/apptainer-test.sh"
in_image "$U" "$D/demo/apptainer-test.sh:/apptainer-test.sh:ro" -- /bin/sh /apptainer-test.sh \
    >"$D/apptainer-test.log" 2>&1 || { cat "$D/apptainer-test.log"; die "apptainer.def's %test fails in the image"; }
sed 's/^/  /' "$D/apptainer-test.log"

# --- 5: the image's versions against containers/constraints.txt (a report, not a check) --------
in_image "$IMAGE_USER" -- python -m pip freeze --all >"$D/pip-freeze.txt" 2>/dev/null || true
python3 - "$D/pip-freeze.txt" containers/constraints.txt <<'EOF' || true
import re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
def pins(path):
    out = {}
    for line in open(path):
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==\s*(\S+)", line)
        if m:
            out[norm(m[1])] = m[2]
    return out
image, pinned = pins(sys.argv[1]), pins(sys.argv[2])
skip = {"pip", "bids-validator-deno"}
free = sorted(set(image) - set(pinned) - skip)
off = sorted(n for n in set(image) & set(pinned) if image[n] != pinned[n])
for n in free:
    print(f"  not pinned: {n}=={image[n]} (add it to containers/constraints.txt)")
for n in off:
    print(f"  differs: {n} {image[n]} in the image, {pinned[n]} in containers/constraints.txt")
if not free and not off:
    print(f"  all {len(image)} packages as pinned in containers/constraints.txt")
EOF

say "OK: image $TAG, $((SIZE / 1000000)) MB, built in ${BUILD_S} s, demo in ${DEMO_S} s, all in $((SECONDS - T_START)) s"
