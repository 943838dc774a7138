# tova serve in a container: builds the package (C++ engine + Python) and serves one model over
# the OpenAI-compatible API on port 8080.
#
#   docker build -t tova .
#   docker run --rm -p 127.0.0.1:8080:8080 -v tova-models:/home/tova/.cache/tova tova \
#       -m smollm2-135m-instruct --n-seq 8 --kv-size 512
#
# Inside the container the server listens on all of the container's interfaces (that is how a
# published port reaches it); publish it on the address you choose with -p, and give
# -e TOVA_API_KEY=... when others can reach it. The server runs as the unprivileged user
# "tova". Models are fetched into /home/tova/.cache/tova on first use: mount a volume there, or
# pass -m /models/FILE.gguf with the file mounted (readable by that user).
FROM python:3.11-slim AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-deps -w /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/tova-*.whl)[server,hub,chat]" && rm -rf /wheels \
    && useradd --create-home --uid 10001 tova && mkdir -p /home/tova/.cache/tova \
    && chown -R tova:tova /home/tova/.cache
USER tova
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health')"
ENTRYPOINT ["tova", "serve", "--host", "0.0.0.0", "--port", "8080"]
CMD ["-m", "smollm2-135m-instruct"]
