# Installed as /etc/profile.d/chorus.sh: the packaged agent runs as the chorus user, and the
# chorus commands answer only an agent run by yourself or root unless told which other account
# to trust.
export CHORUS_SOCKET_OWNER=chorus
# The packaged agent's socket, for users other than root (whose default it already is).
export CHORUS_SOCKET=/run/chorus/chorus.sock
