nono run --read /srv/work/reviews --net-block -- "$@"
