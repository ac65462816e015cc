"""Credit between users: tallies, chits, routes and lifts."""
