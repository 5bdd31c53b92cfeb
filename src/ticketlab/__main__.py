from ticketlab.cli import entry

entry()
