#!/usr/bin/env python3
"""mplus quickstart: create a session, inject a text into its memory, stream a generation.

Run examples/python/generate_stubs.sh first (stubs land in examples/python/gen), then:
    python3 examples/python/quickstart.py --server 127.0.0.1:50051
"""

import argparse
import os
import sys
import uuid

import grpc

STORY = (
    "Maria keeps her bicycle in the blue shed behind the library. Every Tuesday she rides it "
    "to the market by the river, where she buys apples, bread and a bunch of sunflowers. Her "
    "neighbour Tom once borrowed the bicycle and returned it with a flat tyre, so now she "
    "keeps the shed locked with a brass padlock whose code is 4-7-1-9."
)
QUESTION = "Where does Maria keep her bicycle?"


def parse_args():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="mplus-server HOST:PORT")
    parser.add_argument("--stubs_dir", default=os.path.join(here, "gen"),
                        help="where generate_stubs.sh wrote the stubs")
    parser.add_argument("--session_id", default="",
                        help="id of the new session (empty: the server picks one)")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=120, help="seconds per call")
    parser.add_argument("--keep", action="store_true", help="keep the session at the end")
    return parser.parse_args()


def main():
    args = parse_args()
    sys.path.insert(0, args.stubs_dir)
    try:
        from mplus.v1 import memory_service_pb2 as pb
        from mplus.v1 import memory_service_pb2_grpc as pb_grpc
    except ImportError as e:
        sys.exit(f"cannot import the stubs from {args.stubs_dir} ({e}); "
                 "run examples/python/generate_stubs.sh first")

    with grpc.insecure_channel(args.server) as channel:
        stub = pb_grpc.MemoryServiceStub(channel)

        session = stub.CreateSession(
            pb.CreateSessionRequest(session_id=args.session_id, labels={"example": "quickstart"}),
            timeout=args.timeout)
        sid = session.session_id
        print(f"session: {sid}")
        # Session-affine load balancers route on this header; send it on every session call.
        affinity = [("x-mplus-session", sid)]

        # A request_id makes the inject safe to retry: a repeat returns the first result.
        injected = stub.Inject(
            pb.InjectRequest(session_id=sid, text=STORY, request_id=str(uuid.uuid4())),
            metadata=affinity, timeout=args.timeout)
        print(f"injected: {injected.tokens_injected} tokens in {injected.chunks} chunks "
              f"(session now holds {injected.session.injected_tokens} injected tokens)")

        print(f"prompt: {QUESTION}")
        print("answer: ", end="", flush=True)
        request = pb.GenerateRequest(
            session_id=sid, text=QUESTION,
            sampling=pb.SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0))
        last = None
        for response in stub.Generate(request, metadata=affinity, timeout=args.timeout):
            print(response.text, end="", flush=True)
            last = response
        print()
        if last is not None:
            u = last.usage
            print(f"usage: finish={pb.FinishReason.Name(last.finish_reason)} "
                  f"prompt_tokens={u.prompt_tokens} completion_tokens={u.completion_tokens} "
                  f"retrieved_ltm_tokens={u.retrieved_ltm_tokens} "
                  f"time_to_first_token={u.time_to_first_token_seconds:.3f}s")

        if not args.keep:
            stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid), metadata=affinity,
                               timeout=args.timeout)
            print(f"deleted: {sid}")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        sys.exit(f"error: {e.code().name}: {e.details()}")
