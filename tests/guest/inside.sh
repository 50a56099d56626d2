#!/usr/bin/env bash
# Runs inside the test guest (scripts/guest boots it): set up the family's real
# devices, then pytest on the node ids in OUT/args. The root filesystem is the
# host's, read-only; OUT is shared writable; /tmp is the guest's own.
#   inside.sh FAMILY[,FAMILY...] OUT MODULES_DIR   (one boot sets up every family named)
set -u
families=$1 out=$2 modules=$3
say() { echo "inside: $*"; }
fail() { say "$*"; echo "$*" >"$out/summary"; echo 3 >"$out/rc"; exit 0; }
say "the kernel has been up $(cut -d' ' -f1 /proc/uptime) s"

setup_vfio() {
  modprobe -a vfio-pci vfio_iommu_type1 || fail "modprobe vfio-pci vfio_iommu_type1 failed"
  edus=()
  for dev in /sys/bus/pci/devices/*; do
    [[ $(<"$dev/vendor") == 0x1234 && $(<"$dev/device") == 0x11e8 ]] && edus+=("${dev##*/}")
  done
  ((${#edus[@]} == 2)) || fail "want 2 edu devices (1234:11e8) in the guest, found ${#edus[@]}"
  echo 1234 11e8 >/sys/bus/pci/drivers/vfio-pci/new_id || fail "vfio-pci new_id failed"
  edu= lone= shared= sharedgroup=
  for bdf in "${edus[@]}"; do
    for _ in $(seq 100); do [[ -e /sys/bus/pci/devices/$bdf/iommu_group ]] && break; sleep 0.1; done
    group=$(basename "$(readlink "/sys/bus/pci/devices/$bdf/iommu_group")")
    for _ in $(seq 100); do [[ -e /dev/vfio/$group ]] && break; sleep 0.1; done
    [[ -e /dev/vfio/$group ]] || fail "/dev/vfio/$group did not appear after binding $bdf"
    members=$(ls "/sys/kernel/iommu_groups/$group/devices" | wc -l)
    if ((members == 1)); then edu=$bdf lone=$group; else shared=$bdf sharedgroup=$group; fi
  done
  [[ -n $edu && -n $shared ]] || fail "want one edu alone in its group and one sharing one"
  say "edu $edu (group $lone); edu $shared in non-viable group $sharedgroup:" \
    "$(ls "/sys/kernel/iommu_groups/$sharedgroup/devices" | tr '\n' ' ')"
  export IRQBYPASS_TEST_VFIO_NONVIABLE=/dev/vfio/$sharedgroup
  export IRQBYPASS_TEST_VFIO_NONVIABLE_NAME=$shared
  export IRQBYPASS_TEST_VFIO_EDU=$edu
  export IRQBYPASS_TEST_VFIO_DEVICE=$edu IRQBYPASS_TEST_VFIO_INDEX=msi
  # e1000e (82574L, 5 MSI-X vectors), its driver blacklisted on the command line
  nic=
  for dev in /sys/bus/pci/devices/*; do
    [[ $(<"$dev/vendor") == 0x8086 && $(<"$dev/device") == 0x10d3 ]] && nic=${dev##*/}
  done
  [[ -n $nic ]] || fail "want an e1000e (8086:10d3) in the guest, found none"
  echo 8086 10d3 >/sys/bus/pci/drivers/vfio-pci/new_id || fail "vfio-pci new_id 8086 10d3 failed"
  for _ in $(seq 100); do [[ -e /sys/bus/pci/devices/$nic/iommu_group ]] && break; sleep 0.1; done
  group=$(basename "$(readlink "/sys/bus/pci/devices/$nic/iommu_group")")
  for _ in $(seq 100); do [[ -e /dev/vfio/$group ]] && break; sleep 0.1; done
  [[ -e /dev/vfio/$group ]] || fail "/dev/vfio/$group did not appear after binding e1000e $nic"
  say "e1000e $nic (group $group)"
  export IRQBYPASS_TEST_VFIO_E1000E=$nic
}

setup_vdpa() {
  modprobe -a vhost_iotlb vhost irqbypass || fail "modprobe vhost_iotlb vhost irqbypass failed"
  for m in vringh vdpa vdpa_sim vdpa_sim_blk vdpa_sim_net vhost_vdpa; do
    insmod "$modules/$m.ko" || fail "insmod $modules/$m.ko failed"
  done
  vdpa dev add name vdpa-blk mgmtdev vdpasim_blk || fail "vdpa dev add (vdpasim_blk) failed"
  vdpa dev add name vdpa-net mgmtdev vdpasim_net || fail "vdpa dev add (vdpasim_net) failed"
  node() {  # the /dev/vhost-vdpa-N of vDPA device $1
    local d
    for _ in $(seq 100); do
      for d in /sys/bus/vdpa/devices/"$1"/vhost-vdpa-*; do
        [[ -e $d && -e /dev/${d##*/} ]] && { echo "/dev/${d##*/}"; return; }
      done
      sleep 0.1
    done
  }
  blk=$(node vdpa-blk) net=$(node vdpa-net)
  [[ -n $blk && -n $net ]] || fail "no /dev/vhost-vdpa-N for vdpa-blk ($blk) or vdpa-net ($net)"
  say "vdpa-blk $blk, vdpa-net $net"
  export IRQBYPASS_TEST_VDPA_BLK=$blk IRQBYPASS_TEST_VDPA_NET=$net
  export IRQBYPASS_TEST_VDPA_DEVICE=$blk
  # the kernel's vhost-net and a tap for the vhost tests (Debian ships both modules)
  modprobe -a tun vhost_net || fail "modprobe tun vhost_net failed"
  for _ in $(seq 100); do [[ -c /dev/vhost-net ]] && break; sleep 0.1; done
  [[ -c /dev/vhost-net ]] || fail "/dev/vhost-net did not appear after modprobe vhost_net"
  say "vhost-net /dev/vhost-net"
  export IRQBYPASS_TEST_VHOST_NET=/dev/vhost-net
  # vhost-vsock speaks the same call ioctls (the vhost tests bind it, nothing more)
  if modprobe vhost_vsock && [[ -c /dev/vhost-vsock ]]; then
    export IRQBYPASS_TEST_VHOST_VSOCK=/dev/vhost-vsock
  else
    say "no /dev/vhost-vsock after modprobe vhost_vsock: its test skips"
  fi
}

setup_kvm() {
  # TCG's "max" CPU emulates AMD's SVM (with nested paging): kvm_amd makes /dev/kvm
  grep -qw svm /proc/cpuinfo || fail "the guest's CPU has no svm flag (boot it with -cpu max)"
  modprobe kvm_amd || fail "modprobe kvm_amd failed"
  for _ in $(seq 100); do [[ -c /dev/kvm ]] && break; sleep 0.1; done
  [[ -c /dev/kvm ]] || fail "/dev/kvm did not appear after modprobe kvm_amd"
  say "kvm /dev/kvm (kvm_amd, nested paging $(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null))"
}

IFS=, read -ra names <<<"$families"
for family in "${names[@]}"; do
  case $family in
  vfio) setup_vfio ;;
  vdpa) setup_vdpa ;;
  kvm) setup_kvm ;;
  *) fail "unknown family $family" ;;
  esac
  say "$family set up, $SECONDS s after this script started"
done

export IRQBYPASS_IN_GUEST=$families IRQBYPASS_GUEST_OUT=$out PYTHONDONTWRITEBYTECODE=1 HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hyp
if [[ -s $out/exec ]]; then  # scripts/guest --exec: a command instead of pytest
  say "running: $(<"$out/exec")"
  PATH=$PWD/.venv/bin:$PATH bash -c "$(<"$out/exec")" 2>&1 | tee "$out/exec.out"
  rc=${PIPESTATUS[0]}
  echo "exit $rc; its output in $out/exec.out" >"$out/summary"
  echo "$rc" >"$out/rc"
  exit 0
fi
say "pytest starts, $SECONDS s after this script started"
mapfile -t ids <"$out/args"
# no Hypothesis plugin: no guest test uses it, and importing it takes a minute under TCG;
# a test still running after 300 s prints every thread's stack (a hang shows where)
.venv/bin/python -m pytest -p no:cacheprovider -p no:hypothesispytest --basetemp=/tmp/pytest -q -rfEs \
  -o faulthandler_timeout=300 \
  --junitxml="$out/junit.xml" "${ids[@]}" 2>&1 | tee "$out/pytest.out"
rc=${PIPESTATUS[0]}
tail -n 1 "$out/pytest.out" >"$out/summary"
echo "$rc" >"$out/rc"
