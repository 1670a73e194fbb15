nono run --read /srv/code/reviews --net-block -- "$@"
