"""Outputs posted from another thread reach their queues in order, with fewer loop wake-ups than posts."""

import asyncio
import threading

from loraplex.router.mailbox import OutputMailbox


def test_posts_from_a_thread_arrive_in_order_and_share_wake_ups():
    async def main():
        loop = asyncio.get_running_loop()
        wake_ups = 0
        original = loop.call_soon_threadsafe

        def counting(callback, *args):
            nonlocal wake_ups
            wake_ups += 1
            return original(callback, *args)

        loop.call_soon_threadsafe = counting
        mailbox = OutputMailbox(loop)
        queues = [asyncio.Queue() for _ in range(4)]
        posts = 2000

        def engine():
            for i in range(posts):
                mailbox.post(queues[i % 4], i)

        thread = threading.Thread(target=engine)
        thread.start()
        received = [[await q.get() for _ in range(posts // 4)] for q in queues]
        thread.join()
        assert received == [list(range(k, posts, 4)) for k in range(4)]
        assert 1 <= wake_ups < posts
        assert all(q.empty() for q in queues)

    asyncio.run(main())


def test_a_post_after_a_flush_schedules_another():
    async def main():
        mailbox = OutputMailbox(asyncio.get_running_loop())
        queue = asyncio.Queue()
        mailbox.post(queue, "a")
        assert await asyncio.wait_for(queue.get(), 1) == "a"
        mailbox.post(queue, "b")
        assert await asyncio.wait_for(queue.get(), 1) == "b"

    asyncio.run(main())
