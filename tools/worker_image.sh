#!/usr/bin/env bash
# `make image` and `make push`: the worker image, yours on top of it, and the catalog of what
# it runs.
#
#   tools/worker_image.sh build   the base image spotline-worker:TAG (gpu_worker/Dockerfile) and,
#                                 with ANALYZER_DIR, your image FROM it (ANALYZER_DIR/Dockerfile)
#   tools/worker_image.sh push    log in to the stack's ECR repository, build, tag, push, then
#                                 write the analyzer catalog from the pushed image
#
# Settings come from the environment (make passes its command-line variables the same way):
#   ANALYZER_DIR  your analyzer package's directory, with its Dockerfile (like
#                 examples/kmeans/Dockerfile); required (make's default: examples/kmeans);
#                 empty builds and pushes the base alone
#   TAG           the image tag; default the git short sha (your analyzer's repository's in
#                 front when it has its own), with -dirty-UTCSTAMP while a tree has changes:
#                 the repository's tags are immutable, so every build needs a tag of its own
#   STACK_NAME    the stack whose output WorkerRepositoryUri names the repository (spotline)
#   AWS_REGION    its region (default AWS_DEFAULT_REGION, else us-east-1)
#   PLATFORM      docker's --platform (default linux/amd64: the fleet's GPU types are x86_64)
#   WITH_MODEL    passed to the base image (1, its default: text_embed's model; 0: light image)
#   CATALOG       where the catalog goes (default functions/spotline/catalog.json)
set -euo pipefail

die() {
    echo "worker_image: $*" >&2
    exit 2
}

[[ $# == 1 && ($1 == build || $1 == push) ]] || die "usage: $0 build|push"
command=$1
target=$([[ $command == build ]] && echo image || echo push) # the make target that runs it

# ANALYZER_DIR is read before leaving the caller's directory, so a relative path is the caller's.
if [[ -z ${ANALYZER_DIR+set} ]]; then
    die "ANALYZER_DIR is not set: give the directory of your analyzer package, whose Dockerfile" \
        "starts FROM the base image (like examples/kmeans/Dockerfile), e.g." \
        "make $target ANALYZER_DIR=../my-analyzer; ANALYZER_DIR= (empty) for the base image alone"
fi
if [[ -n $ANALYZER_DIR ]]; then
    [[ -f $ANALYZER_DIR/Dockerfile ]] || die "ANALYZER_DIR=$ANALYZER_DIR has no Dockerfile"
    ANALYZER_DIR=$(cd "$ANALYZER_DIR" && pwd)
fi
cd "$(dirname "$0")/.."

PLATFORM=${PLATFORM:-linux/amd64}
STACK_NAME=${STACK_NAME:-spotline}
REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}
CATALOG=${CATALOG:-functions/spotline/catalog.json}
BASE=spotline-worker

short_sha() {
    git -C "$1" rev-parse --short HEAD 2>/dev/null ||
        die "TAG: $1 is not a git checkout; give TAG=..."
}

dirty() {
    [[ -n $(git -C "$1" status --porcelain 2>/dev/null) ]]
}

default_tag() {
    local tag
    tag=$(short_sha .)
    local changed=0
    dirty . && changed=1
    if [[ -n $ANALYZER_DIR ]]; then
        local ours theirs
        ours=$(git rev-parse --show-toplevel)
        theirs=$(git -C "$ANALYZER_DIR" rev-parse --show-toplevel 2>/dev/null || true)
        if [[ -n $theirs && $theirs != "$ours" ]]; then
            tag="$(short_sha "$ANALYZER_DIR")-$tag"
            dirty "$ANALYZER_DIR" && changed=1
        fi
    fi
    if ((changed)); then
        tag="$tag-dirty-$(date -u +%Y%m%d%H%M%S)"
    fi
    echo "$tag"
}

TAG=${TAG:-$(default_tag)}
[[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "TAG=$TAG is not a docker tag"

# The image to push: yours when there is an analyzer, else the base.
if [[ -n $ANALYZER_DIR ]]; then
    name=$(basename "$ANALYZER_DIR" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9._\n-' '-')
    IMAGE="$BASE-$name:$TAG"
else
    IMAGE="$BASE:$TAG"
fi

build() {
    docker build --platform "$PLATFORM" -f gpu_worker/Dockerfile -t "$BASE:$TAG" \
        --build-arg "SPOTLINE_REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
        ${WITH_MODEL:+--build-arg "WITH_MODEL=$WITH_MODEL"} .
    # Local only (never pushed): the base a plain `docker build` of a user's Dockerfile finds.
    docker tag "$BASE:$TAG" "$BASE:latest"
    if [[ -n $ANALYZER_DIR ]]; then
        docker build --platform "$PLATFORM" -t "$IMAGE" \
            --build-arg "SPOTLINE_WORKER=$BASE:$TAG" "$ANALYZER_DIR"
    fi
    echo "built $IMAGE"
}

push() {
    local repository
    repository=$(aws cloudformation describe-stacks --stack-name "$STACK_NAME" --region "$REGION" \
        --query "Stacks[0].Outputs[?OutputKey=='WorkerRepositoryUri'].OutputValue" --output text)
    if [[ -z $repository || $repository == None ]]; then
        die "stack $STACK_NAME ($REGION) has no output WorkerRepositoryUri: deploy it first" \
            "(sam deploy), or give STACK_NAME and AWS_REGION"
    fi
    # Log in first: bad credentials fail in a second, not after a long build.
    aws ecr get-login-password --region "$REGION" |
        docker login --username AWS --password-stdin "${repository%%/*}"
    build
    docker tag "$IMAGE" "$repository:$TAG"
    docker push "$repository:$TAG"
    # The catalog comes from the pushed image itself: the API validates against exactly what
    # the fleet runs. Written aside and moved, so a failed run leaves the old catalog whole.
    partial=$(mktemp "$CATALOG.XXXXXX")
    trap 'rm -f "$partial"' EXIT
    docker run --rm --platform "$PLATFORM" --network none --entrypoint python3 \
        --env "WORKER_IMAGE=$repository:$TAG" "$repository:$TAG" -m gpu_worker --catalog >"$partial"
    if ! python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$partial" 2>/dev/null; then
        trap - EXIT
        die "the catalog $repository:$TAG printed is not JSON (kept in $partial; $CATALOG unchanged)"
    fi
    mv "$partial" "$CATALOG"
    trap - EXIT
    echo "pushed $repository:$TAG; catalog written to $CATALOG"
    echo "next: sam build && sam deploy --parameter-overrides DeployWorkers=true WorkerImageTag=$TAG ..."
}

"$command"
