nono run --allow /workspace --net-block -- "$@"
