-- Room on each page for the updates that follow a row's insert.
--
-- A charge is written three or four times in its first minute and a subscription three times
-- a period. An update that changes no indexed column (nor one an index's condition reads) can
-- stay on its page as a heap-only tuple and then adds no index entry, but only when the page
-- has room; with pages packed full on insert, every update moved its row to another page and
-- added an entry to each index (seven for a charge). What can stay: a charge's lease renewed
-- and its send counted, its session recorded when Moment's webhook has already moved it, a
-- subscription claimed or announced. A change of status, session id, next charge time or open
-- charge still adds its index entries, whatever the room. Pages left with dead versions are
-- pruned in place as they are read. The price is disk: a charge page is filled to 70 % on
-- insert, and the room left is used only while the charge is new. It applies to pages written
-- from now on.
alter table charge set (fillfactor = 70);
alter table subscription set (fillfactor = 70);

-- The terms' look-up by billing time (`charges::counted_since`) runs right after
-- `charges::usage`, which reads all of the mandate's charges through `charge_mandate_idx`
-- already; a second index by billing time only cost an entry for every version of every charge.
drop index charge_mandate_billed_idx;
