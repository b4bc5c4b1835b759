-- Room on each page for the updates that follow a row's insert.
--
-- A charge is written four or five times in its first minute (recorded, checked, its session
-- recorded, paid) and a subscription three times a period (claimed, charged, settled). An
-- update that changes no indexed column can stay on its page (a heap-only tuple) and then adds
-- no index entries, but only when the page has room. With pages packed full on insert, every
-- update moved its row to another page and added an entry to each index: for a charge, eight.
-- A lower fill factor leaves that room; pages left with dead versions are pruned in place as
-- they are read. It applies to pages written from now on.
alter table charge set (fillfactor = 70);
alter table subscription set (fillfactor = 70);

-- The terms' look-ups read all of a mandate's charges through `charge_mandate_idx` already
-- (`charges::usage` counts every occurrence); a second index by billing time only cost an
-- entry for every version of every charge.
drop index charge_mandate_billed_idx;
