import asyncio

from seqkv.gateway.residency import SlotPool


def test_a_turn_goes_back_to_the_slot_that_computed_its_parent():
    async def run() -> None:
        pool = SlotPool(3)
        # the parent is held nowhere (a restarted server): its home slot, though another is older
        pool.slots[0].last_used = 0.0
        pool.slots[2].last_used = 5.0
        slot = await pool.acquire("p", home=2)
        assert slot.index == 2
        # home busy: any free slot, unless the turn must wait for it
        other = await pool.acquire("q", home=2)
        assert other.index != 2
        waiting = asyncio.create_task(pool.acquire("p", home=2, wait_for_home=True))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await pool.release(slot)
        assert (await waiting).index == 2
        # the slot still holding the parent wins over its home
        pool.slots[1].node = "r"
        await pool.release(other)
        assert (await pool.acquire("r", home=0)).index == 1
    asyncio.run(run())
