"""How rank 0 deals jobs to the ranks: shares of work that match the ranks' cores."""
from __future__ import annotations

from hpcpilot.harvester import RawJob
from hpcpilot.workflow.hpc import balanced_shares


def jobs_of(core_counts: list[int]) -> list[RawJob]:
    return [RawJob(pandaid, pandaid, {"PandaID": str(pandaid), "coreCount": cores})
            for pandaid, cores in enumerate(core_counts, start=1)]


def cores_dealt(shares: list[list[RawJob]]) -> list[int]:
    return [sum(job.core_count for job in share) for share in shares]


def test_jobs_of_one_size_go_round_robin():
    shares = balanced_shares(jobs_of([1] * 7), [2, 2, 2])
    assert [[job.pandaid for job in share] for share in shares] == [[1, 4, 7], [2, 5], [3, 6]]


def test_a_big_job_is_balanced_by_small_ones_on_the_other_ranks():
    """Round-robin gave one rank the 8-core job and four 1-core ones (12 cores), the other four (4)."""
    shares = balanced_shares(jobs_of([8] + [1] * 8), [8, 8])
    assert cores_dealt(shares) == [8, 8]
    assert [job.core_count for job in shares[0]] == [8]


def test_a_job_weighs_no_more_than_the_cores_of_its_rank():
    """On 1-core ranks the 8-core job runs on one core, as long as any other: it does not excuse its rank from
    the others, nor does a coreCount of 10**9."""
    assert [len(share) for share in balanced_shares(jobs_of([8] + [1] * 8), [1, 1])] == [5, 4]
    assert [len(share) for share in balanced_shares(jobs_of([10**9] + [1] * 99), [2, 2])] == [50, 50]


def test_a_rank_with_more_cores_gets_more_work():
    assert [len(share) for share in balanced_shares(jobs_of([1] * 10), [4, 1])] == [8, 2]


def test_no_rank_gets_a_job_while_another_has_fewer_cores_dealt():
    counts = [16, 8, 8, 4, 4, 4, 2, 2, 1, 1, 1, 1, 1, 12, 3, 6]
    shares = balanced_shares(jobs_of(counts), [16] * 4)
    assert sorted(job.pandaid for share in shares for job in share) == list(range(1, len(counts) + 1))
    least = min(cores_dealt(shares))
    assert all(cores - share[-1].core_count <= least for cores, share in zip(cores_dealt(shares), shares))
    assert max(cores_dealt(shares)) - least <= 1  # round-robin: 31, 15, 12, 12


def test_more_ranks_than_jobs_leaves_the_last_ranks_without_any():
    shares = balanced_shares(jobs_of([2, 1]), [1] * 8)
    assert [len(share) for share in shares] == [1, 1, 0, 0, 0, 0, 0, 0]


def test_an_unreadable_core_count_weighs_one():
    jobs = jobs_of([4, 1, 1, 1])
    jobs[1].definition["coreCount"] = "many"  # it fails validation on its rank
    assert cores_dealt(balanced_shares(jobs, [4, 4])) == [4, 3]
