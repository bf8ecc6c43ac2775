"""How the cloud's inventory (nova + placement under the openstack driver) bounds
placement and extends node views; the real reading is tested on the deploy test bed
(tests/deploy/test_openstack_driver.py)."""
from mec_conpaas.db import models
from mec_conpaas.manager import inventory


def host(up=True, memory_mb_free=1024, vcpus_free=8):
    return {"up": up, "vcpus": 8, "vcpus_free": vcpus_free, "memory_mb": 4096,
            "memory_mb_free": memory_mb_free}


def entry(used=1, max_instances=8):
    return {"max_instances": max_instances, "used": used, "up": True, "schedulable": True}


def test_free_memory_and_vcpus_bound_the_free_slots():
    # 1,000 MB free fits 7 more instances of 128 MB; 8 slots, 1 used.
    assert inventory.cap(entry(), host(memory_mb_free=1000), 128, 0.5)["max_instances"] == 8
    assert inventory.cap(entry(), host(memory_mb_free=300), 128, 0.5)["max_instances"] == 3
    # A 1.5-CPU instance takes a 2-vCPU flavor: 5 free vCPUs fit 2.
    assert inventory.cap(entry(), host(vcpus_free=5), 128, 1.5)["max_instances"] == 3
    # Over-allocated (placement says negative): nothing more, the used ones stay counted.
    assert inventory.cap(entry(used=4), host(memory_mb_free=-50), 128, 0.5)[
        "max_instances"] == 4


def test_a_host_the_cloud_calls_down_is_down():
    assert inventory.cap(entry(), host(up=False), 128, 0.5)["up"] is False


def test_views_get_their_hosts_and_unregistered_hosts_are_added():
    nodes = [models.Node(name="ap-1", hostname="ap-1"), models.Node(name="x", hostname="ap-2")]
    views = [{"name": "ap-1"}, {"name": "x"}]
    cloud = {"ap-1": host(), "ap-2": host(memory_mb_free=5), "ap-3": host(up=False)}
    out = inventory.annotate(views, nodes, cloud)
    assert [v["name"] for v in out] == ["ap-1", "x", "ap-3"]
    assert out[1]["cloud"]["memory_mb_free"] == 5 and out[1]["registered"] is True
    assert out[2]["state"] == "down" and out[2]["registered"] is False
    assert out[2]["schedulable"] is False and "no node agent" in out[2]["disabled_reason"]
    # No cloud inventory (the lxc driver): views as they were.
    assert inventory.annotate([{"name": "ap-1"}], nodes[:1], None) == [{"name": "ap-1"}]


def reported(reserve_cpus=0.5, reserve_memory_mb=128):
    return {"capacity": {"cpus": 4.0, "memory_mb": 4096, "reserve_cpus": reserve_cpus,
                         "reserve_memory_mb": reserve_memory_mb}}


def placed(vcpus_reserved, memory_mb_reserved, vcpus_free=32, memory_mb_free=3328):
    # 8 vCPUs at ratio 4.0, 4,096 MB at 1.0, nothing used: free = (total - reserved) * ratio.
    return dict(host(vcpus_free=vcpus_free, memory_mb_free=memory_mb_free),
                vcpus_reserved=vcpus_reserved, cpu_allocation_ratio=4.0,
                memory_mb_reserved=memory_mb_reserved, ram_allocation_ratio=1.0)


def test_a_placement_reserve_that_covers_the_node_reserve_changes_nothing():
    node = models.Node(name="ap-1", hostname="ap-1", report=reported())
    got = inventory.host_of({"ap-1": placed(1, 768, vcpus_free=28)}, node)
    assert (got["vcpus_free"], got["memory_mb_free"]) == (28, 3328)
    assert got["reserve"]["node"] == {"vcpus": 1, "memory_mb": 128}
    assert got["reserve"]["subtracted"] == {} and got["reserve"]["message"] is None


def test_a_short_placement_reserve_is_subtracted_and_named_in_node_show():
    # No vCPU reserved (nova's default) and 64 MB where the node keeps 1.5 cpus and
    # 256 MB: 2 whole vCPUs at ratio 4.0 and 192 MB come off what placement has free.
    node = models.Node(name="x", hostname="ap-2", report=reported(1.5, 256))
    cloud = {"ap-2": placed(0, 64, vcpus_free=32 - 3, memory_mb_free=4096 - 64 - 128)}
    got = inventory.host_of(cloud, node)
    assert got["reserve"]["subtracted"] == {"vcpus": 8, "memory_mb": 192}
    assert (got["vcpus_free"], got["memory_mb_free"]) == (29 - 8, 3904 - 192)
    message = got["reserve"]["message"]
    assert "reserved_host_cpus = 2" in message and "reserved_host_memory_mb = 256" in message
    # Placement then fits what the corrected free memory takes: 3,712 MB / 128 MB.
    assert inventory.cap(entry(used=0, max_instances=100), got, 128, 0.5)[
        "max_instances"] == 21  # 21 vCPUs of 1 each bound it before memory's 29
    # node show carries the checked entry; the cloud's own inventory is left as it was.
    view = inventory.annotate([{"name": "x"}], [node], cloud)[0]
    assert view["cloud"]["reserve"]["message"] == message
    assert cloud["ap-2"]["vcpus_free"] == 29 and "reserve" not in cloud["ap-2"]


def test_no_reserve_check_without_a_capacity_report_or_placement_reserves():
    bare = models.Node(name="ap-1", hostname="ap-1")
    assert "reserve" not in inventory.host_of({"ap-1": placed(0, 0)}, bare)
    node = models.Node(name="ap-1", hostname="ap-1", report=reported())
    assert inventory.host_of({"ap-1": host()}, node) == host()
